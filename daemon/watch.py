"""The daemon's side of monitoring: step pace (ETA), stall and lost-worker alerts, ``--on-alert``.

``DaemonWatch.observe`` sees every event the daemon records (one call in ``Tritterd.record``);
``tick`` runs from the housekeeping loop and raises ``stall`` alerts: a running run whose worker
has made no step for ``stall_factor`` times its median step interval (and at least
``stall_min_s``).  The median of recent intervals, not the mean, so the occasional eval or
checkpoint does not stretch the bound.  ``lost_worker`` is raised by ``Tritterd`` when a worker
dies without saying why (killed, crashed).

``AlertHook`` runs ``tritterd --on-alert CMD`` once per alert with the alert as one JSON object
on stdin, in the background: at most ``MAX_RUNNING`` at a time, each killed after
``HOOK_TIMEOUT_S``, at most ``MAX_PENDING`` waiting (the oldest dropped, with a log line), so a
slow or hanging hook can never hold up the event loop.  The command comes only from tritterd's
own command line (or its unit file); no client request can set it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from tritter.protocol.events import AlertEvent, AnyEvent, EvalEvent, RunEvent, SampleEvent, StepEvent
from tritter.protocol.state import RunState
from tritter.recipe.eta import eta_seconds
from tritter.protocol.wire import encode_json

log = logging.getLogger("tritterd.watch")

PACE_WINDOW = 20  # recent step intervals kept per run (for the median and the ETA)
STALL_FACTOR = 20.0
STALL_MIN_S = 120.0
MIN_INTERVALS = 3  # intervals seen since the worker (re)started before a stall can be judged
MAX_RUNNING = 2
MAX_PENDING = 100
HOOK_TIMEOUT_S = 30.0


@dataclass
class Pace:
    """Arrival times (monotonic seconds) of one run's recent steps, since its worker (re)started."""

    arrivals: collections.deque[tuple[int, float]]
    stalled: bool = False  # a stall alert is out and no step has arrived since

    def median_interval(self) -> float | None:
        """Median seconds per step over the window; None with fewer than MIN_INTERVALS intervals."""
        if len(self.arrivals) <= MIN_INTERVALS:
            return None
        pairs = list(self.arrivals)
        intervals = [(t1 - t0) / max(1, s1 - s0) for (s0, t0), (s1, t1) in zip(pairs, pairs[1:])]
        return statistics.median(intervals)


class DaemonWatch:
    """Pace per run, stall detection and the alert hook.

    ``record``: the daemon's one path for events (``Tritterd.record``); ``runs``: its fold;
    ``has_worker(run_id)``: whether a worker process is alive for the run; ``clock``: monotonic
    seconds (tests pass a fake).
    """

    def __init__(
        self,
        runs: dict[str, RunState],
        record: Callable[[AnyEvent], None],
        has_worker: Callable[[str], bool],
        stall_factor: float = STALL_FACTOR,
        stall_min_s: float = STALL_MIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runs = runs
        self.record = record
        self.has_worker = has_worker
        self.stall_factor = stall_factor
        self.stall_min_s = stall_min_s
        self.clock = clock
        self.pace: dict[str, Pace] = {}
        self.hook: AlertHook | None = None

    def observe(self, event: AnyEvent) -> None:
        """Called for every recorded event (after the fold)."""
        if isinstance(event, StepEvent):
            pace = self.pace.get(event.run_id)
            if pace is None:
                pace = self.pace[event.run_id] = Pace(collections.deque(maxlen=PACE_WINDOW + 1))
            pace.arrivals.append((event.step, self.clock()))
            pace.stalled = False
        elif isinstance(event, RunEvent) and event.status in ("started", "resumed", "paused"):
            self.pace.pop(event.run_id, None)  # a new worker (or a pause): judge its pace afresh
        elif isinstance(event, AlertEvent) and self.hook is not None:
            self.hook.notify(event)

    def seconds_per_step(self, run_id: str) -> float | None:
        """The run's median seconds per optimizer step over its recent steps; None when unknown or too few steps."""
        pace = self.pace.get(run_id)
        return pace.median_interval() if pace is not None else None

    def eta_seconds(self, state: RunState) -> float | None:
        """Seconds left at the median recent pace, later stages scaled by their FLOPs per step
        (``recipe.eta``); None when not running or too early to tell."""
        per_step = self.seconds_per_step(state.run_id)
        return eta_seconds(state, per_step) if per_step is not None else None

    def tick(self) -> None:
        """Raise a ``stall`` alert (once per stall) for every running run that stopped stepping."""
        now = self.clock()
        for run_id, pace in list(self.pace.items()):
            state = self.runs.get(run_id)
            if state is None or state.status != "running" or not self.has_worker(run_id) or pace.stalled:
                continue
            median = pace.median_interval()
            if median is None:
                continue
            bound = max(self.stall_factor * median, self.stall_min_s)
            silent = now - pace.arrivals[-1][1]
            if silent > bound:
                pace.stalled = True
                self.record(AlertEvent(
                    run_id=run_id, level="warning", reason="stall", step=state.current_step, value=silent,
                    threshold=bound, source="daemon",
                    message=f"no step for {silent:.0f} s (median step {median:.3g} s; bound {bound:.0f} s)",
                ))

    def lost_worker(self, run_id: str, how: str) -> None:
        """The run's worker died without reporting an outcome (``how``: e.g. 'worker killed by SIGKILL')."""
        state = self.runs.get(run_id)
        self.pace.pop(run_id, None)
        self.record(AlertEvent(run_id=run_id, level="critical", reason="lost_worker",
                               step=state.current_step if state else 0, message=how, source="daemon"))


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The hook runs in its own session: kill the shell and whatever it started (a pipeline).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class AlertHook:
    """Runs ``command`` (a shell command line) per alert, JSON on stdin, never blocking the loop."""

    def __init__(self, command: str, timeout_s: float = HOOK_TIMEOUT_S) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.pending: collections.deque[bytes] = collections.deque()
        self.running = 0
        self.dropped = 0
        self.finished = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, event: AlertEvent) -> None:
        """Queue one run of the hook for ``event`` (call from the event loop's thread)."""
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
            log.warning("--on-alert: %d alerts waiting; dropped the oldest (%d dropped so far)", MAX_PENDING, self.dropped)
        self.pending.append(encode_json(event) + b"\n")
        self._pump()

    def _pump(self) -> None:
        while self.running < MAX_RUNNING and self.pending:
            payload = self.pending.popleft()
            self.running += 1
            task = asyncio.get_running_loop().create_task(self._run(payload))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.running -= 1
        self.finished += 1
        if not task.cancelled() and task.exception() is not None:
            log.error("--on-alert failed: %s", task.exception())
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing more to start
            self._pump()

    async def _run(self, payload: bytes) -> None:
        process = await asyncio.create_subprocess_shell(
            self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            env={**os.environ, "TRITTER_ALERT": "1"}, start_new_session=True,
        )
        try:
            await asyncio.wait_for(process.communicate(payload), self.timeout_s)
        except asyncio.TimeoutError:
            log.error("--on-alert: %r still running after %g s; killed", self.command, self.timeout_s)
            _kill_group(process)
            await process.wait()
        except asyncio.CancelledError:
            _kill_group(process)
            raise
        if process.returncode:
            log.warning("--on-alert: %r exited with %s", self.command, process.returncode)

    async def close(self) -> None:
        """Let running and waiting hooks finish, for at most one hook timeout; then drop the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s + 1
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        if self.pending:
            log.warning("--on-alert: %d alert(s) not delivered at shutdown", len(self.pending))
        self.pending.clear()


def is_monitoring_replay(state: RunState, event: AnyEvent) -> bool:
    """Whether a worker's eval/sample/alert event repeats one the log already has.

    A resumed worker re-trains the steps after its checkpoint and re-measures them; the log
    keeps the first eval and sample of each step (steps only grow, so the newest step logged
    is the bound) and each (step, reason) alert once.  System events are about now: never a replay.
    """
    if isinstance(event, EvalEvent):
        return event.step <= state.eval_step
    if isinstance(event, SampleEvent):
        return event.step <= state.sample_step
    if isinstance(event, AlertEvent):
        worker_steps = [a.step for a in state.alerts if a.source == "worker"]
        if worker_steps and event.step < max(worker_steps):
            return True
        return any(a.step == event.step and a.reason == event.reason for a in state.alerts)
    return False
