"""tritterd's core: the event log, the fold of it, the bus, and the workers, tied together.

Every event, from a worker or from the daemon itself, goes through ``record``: append to
the log (which numbers it), fold into run state, publish, refresh ``run.json``.  Worker
events that repeat what the log already holds (steps re-trained after resuming from a
checkpoint) are dropped there, which is what makes metrics exactly-once across crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import time

import zmq
import zmq.asyncio

from tritter.daemon.bus import Bus
from tritter.daemon.eventlog import EventLog
from tritter.daemon.runfiles import write_run_json
from tritter.daemon.scheduler import SlotPolicy
from tritter.daemon.watch import DaemonWatch, is_monitoring_replay
from tritter.daemon.worker_handle import WorkerProcess
from tritter.formats.hub_names import default_run_name
from tritter.daemon.worker_protocol import Command, Outcome, WorkerFrame, decode_outcome, encode_command
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AlertEvent, EvalEvent, SampleEvent
from tritter.protocol.events import AnyEvent, CheckpointEvent, PhaseEvent, RunEvent, StageEvent, StepEvent
from tritter.protocol.home import Layout
from tritter.protocol.runref import resolve_run_ref
from tritter.protocol.state import RunState, fold, run_tokens_at
from tritter.protocol.wire import ProtocolError, decode_event

log = logging.getLogger("tritterd")

RUN_JSON_INTERVAL_S = 0.5
RUN_JSON_CHECK_EVERY = 10  # housekeeping ticks (5 s) between checks that every run.json is there
SHUTDOWN_GRACE_S = 120.0


class CommandFailed(Exception):
    """A command could not be carried out; ``str()`` is one line for the user (state is consistent)."""


def _why(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason without the exception's name."""
    code = errno.errorcode.get(error.errno or 0, "")
    text = error.strerror or str(error)
    return f"{text} ({code})" if code else text


def new_run_id() -> str:
    """A fresh run id ``YYYYmmdd-HHMMSS-xxxx`` (local time, 4 random hex digits); the caller checks it is unused."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def is_replay(state: RunState, event: AnyEvent) -> bool:
    """Whether a worker event repeats history the log already has (re-training after a resume)."""
    if isinstance(event, StepEvent | PhaseEvent):
        return event.step <= state.current_step
    if isinstance(event, CheckpointEvent):
        if event.status == "deleted":
            return False  # a file is deleted once: its event is never a re-run
        # Same step, other reason (a manual checkpoint of a paused run) is news; same reason is a re-run.
        last = state.last_checkpoint
        return last is not None and (
            event.step < last.step or (event.step == last.step and event.reason == last.reason)
        )
    if isinstance(event, RunEvent):
        # The daemon announces a resume when it respawns a worker; the worker's own word is
        # news only when it had to fall back to another checkpoint.
        return event.status == "resumed" and event.resume_step is not None and event.resume_step == state.resumed_from
    if isinstance(event, EvalEvent | SampleEvent | AlertEvent):
        return is_monitoring_replay(state, event)
    if isinstance(event, StageEvent):
        for stage in state.stages:
            if stage.index == event.index:
                return event.status == "started" or stage.status == "completed"
        return False
    return False


class Tritterd:
    """The daemon's state and actions: the event log (folded into ``runs`` at start), the bus, the workers
    and the run queue; ``record`` is its one path for events (append → fold → publish).
    Raises ProtocolError/OSError at construction when the log is not usable.
    """

    def __init__(self, layout: Layout, ctx: zmq.asyncio.Context) -> None:
        self.layout = layout
        self.ctx = ctx
        layout.runs.mkdir(parents=True, exist_ok=True)
        self.eventlog = EventLog(layout.log)  # the source of truth (``log`` is the logger)
        self.runs: dict[str, RunState] = {}
        for event in self.eventlog.replay():
            fold(self.runs, event)
        self.bus = Bus(ctx, [layout.events_endpoint])
        self.workers: dict[str, WorkerProcess] = {}
        self.slots = SlotPolicy()  # tritterd --slots (daemon/scheduler.py); main sets it
        self._dispatch_lock = asyncio.Lock()  # one decision about slots at a time
        self.stopping = False
        self._dirty: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker_sock = ctx.socket(zmq.ROUTER)
        self._worker_sock.setsockopt(zmq.LINGER, 0)
        self._worker_sock.setsockopt(zmq.RCVHWM, 0)
        self._worker_sock.bind(layout.worker_endpoint)
        # Pace, stall and lost-worker alerts, --on-alert (daemon/watch.py).
        self.watch = DaemonWatch(self.runs, self.record, lambda run_id: run_id in self.workers)
        for state in self.runs.values():
            write_run_json(layout.run_dir(state.run_id), state)
        log.info("replayed %d events (%d runs) from %s", self.eventlog.head, len(self.runs), layout.log)

    # -- the one path for events ------------------------------------------------------------
    def record(self, event: AnyEvent) -> None:
        """Log, fold, publish, refresh run.json.  OSError only when the log append failed, and
        then nothing was recorded (the append is all or nothing); a run.json that cannot be
        written is retried by ``housekeeping`` (it is a view of the log, never the truth)."""
        payload = self.eventlog.append(event)
        state = fold(self.runs, event)
        self.bus.publish(event.kind, event.seq, payload)
        self.watch.observe(event)
        if state is not None:
            if isinstance(event, StepEvent):
                self._dirty.add(state.run_id)  # steps are many: run.json follows them every 0.5 s
            else:
                self._write_run_json(state)
            if isinstance(event, RunEvent):  # places in the queue may have moved
                for other in self.runs.values():
                    if other.status == "queued" and other is not state:
                        self._write_run_json(other)

    def _write_run_json(self, state: RunState) -> None:
        try:
            write_run_json(self.layout.run_dir(state.run_id), state)
            self._dirty.discard(state.run_id)
        except OSError as error:
            self._dirty.add(state.run_id)  # housekeeping retries once there is room
            log.warning("run %s: cannot write run.json (%s); will retry", state.run_id, error.strerror or error)

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark a run failed with ``reason`` (a command could not be carried out).

        Recorded as a ``run`` event when the log can take it; when even that fails (the disk
        is full), the daemon's own state still says failed with the reason (so ``status``,
        ``wait`` and ``resume`` see a run they can move) and the log, which still says running,
        makes the next daemon start resume it.
        """
        log.error("run %s failed: %s", run_id, reason)
        try:
            self.record(RunEvent(run_id=run_id, status="failed", reason=reason))
        except OSError as error:
            log.error("run %s: cannot record the failure in the event log either: %s", run_id, error)
            state = self.runs.get(run_id)
            if state is not None:
                state.status, state.error = "failed", f"{reason} (not in the event log: {error.strerror or error})"
                self._write_run_json(state)

    def _spawn_task(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- runs -------------------------------------------------------------------------------
    def find_run(self, ref: str | None) -> RunState:
        """A run by id, unique id prefix or suffix, or name; None = the newest run (LookupError if none)."""
        if ref is None:
            if not self.runs:
                raise LookupError("there are no runs yet (start one with: tritterctl start)")
            return max(self.runs.values(), key=lambda r: r.started)
        if not ref.strip():
            raise LookupError("an empty run reference matches nothing (give a run id, id prefix or name)")
        if ref in self.runs:
            return self.runs[ref]
        return resolve_run_ref(self.runs.values(), ref)

    async def start_run(self, config: RunConfig) -> str:
        """Record a new run with ``config`` (name defaulted) and start its worker, or queue it when no slot is
        free; returns the new run id.  Raises CommandFailed (one line) when the run cannot be recorded or its worker spawned.
        """
        run_id = new_run_id()
        while run_id in self.runs:
            run_id = new_run_id()
        if not config.name:
            config.name = default_run_name(config.start, config.end)
        async with self._dispatch_lock:
            start_now = self.slots.fits_now(config, self.runs, self.workers)
            try:
                status = "started" if start_now else "queued"
                self.record(RunEvent(run_id=run_id, status=status, run_name=config.name, config=config))
            except OSError as error:  # nothing was recorded: there is no run
                raise CommandFailed(f"cannot record the new run in {self.layout.log}: {_why(error)}") from None
            if start_now:
                await self.spawn_worker(run_id)
        return run_id

    # -- the run queue (tritterd --slots; protocol.state.queue_order, daemon/scheduler.py) --------
    async def dispatch(self) -> None:
        """Start every queued run that fits the free slots now, in queue order."""
        if self.stopping:
            return
        async with self._dispatch_lock:
            for run_id in self.slots.startable(self.runs, self.workers):
                state = self.runs[run_id]
                try:
                    if state.launched:  # it ran before (stopped, failed, extended): from its checkpoint
                        await self.spawn_worker(run_id, resume=True)
                    else:
                        self.record(RunEvent(run_id=run_id, status="started", run_name=state.run_name, config=state.config))
                        await self.spawn_worker(run_id)
                except (CommandFailed, OSError) as error:  # failed and recorded; the others may still go
                    log.error("run %s could not leave the queue: %s", run_id, error)

    async def resume_or_queue(self, run_id: str, config: RunConfig | None = None) -> str:
        """Resume a run that has no worker (paused, stopped, failed, held, or completed and being
        extended with ``config``): at once when its slots are free, else into the queue.
        Returns "resuming" or "queued (position N)".  Raises CommandFailed (one line)."""
        state = self.runs[run_id]
        async with self._dispatch_lock:
            if config is None and state.queued_seq == 0 and self.slots.fits_now(state.config, self.runs, self.workers):
                await self.spawn_worker(run_id, resume=True)
                return "resuming"
            if config is not None and self.slots.fits_now(config, self.runs, self.workers):
                step = state.last_checkpoint.step if state.last_checkpoint else 0
                self._record_or_fail(RunEvent(run_id=run_id, status="resumed", resume_step=step, config=config,
                                              reason=f"extended to {config.end}"))
                await self.spawn_worker(run_id)
                return "resuming"
            self._record_or_fail(RunEvent(run_id=run_id, status="queued", run_name=state.run_name, config=config))
        await self.dispatch()  # a held run may be first in line
        state = self.runs[run_id]
        return "resuming" if state.status == "running" else f"queued (position {state.queue_position})"

    def hold(self, run_id: str) -> None:
        """Pause a queued run: it keeps its place but does not start until resumed."""
        self._record_or_fail(RunEvent(run_id=run_id, status="paused"))

    def _record_or_fail(self, event: RunEvent) -> None:
        try:
            self.record(event)
        except OSError as error:
            raise CommandFailed(f"cannot record it in {self.layout.log}: {_why(error)}") from None

    async def spawn_worker(self, run_id: str, resume: bool = False) -> None:
        """Start the run's worker (after a ``resumed`` event when ``resume``).

        Raises CommandFailed (one line) when the ``resumed`` event cannot be logged (nothing
        changed) or the worker cannot be started (the run is then failed with that reason: it
        never stays "running" with no worker).
        """
        state = self.runs[run_id]
        if resume:
            step = state.last_checkpoint.step if state.last_checkpoint else 0
            try:
                self.record(RunEvent(run_id=run_id, status="resumed", resume_step=step))
            except OSError as error:
                raise CommandFailed(f"cannot record the resume in {self.layout.log}: {_why(error)}") from None
        try:
            worker = await WorkerProcess.spawn(
                run_id, state.config, self.layout.run_dir(run_id), self.layout.cache, self.layout.worker_endpoint
            )
        except OSError as error:
            reason = f"cannot start its worker: {_why(error)}"
            self.fail_run(run_id, reason)
            raise CommandFailed(f"run {run_id} failed: {reason}") from None
        self.workers[run_id] = worker
        self._spawn_task(worker.watch(self._worker_exited))

    def _worker_exited(self, worker: WorkerProcess, how: str) -> None:
        if self.workers.get(worker.run_id) is worker:
            del self.workers[worker.run_id]
        if not self.stopping:
            self._spawn_task(self.dispatch())  # its slots are free: the queue moves (after this outcome is recorded)
        state = self.runs.get(worker.run_id)
        if state is None or not state.active or worker.outcome == Outcome.SHUTDOWN:
            log.info("run %s: %s (%s)", worker.run_id, how, worker.outcome or "no outcome")
            return
        if self.stopping and state.status == "running":
            return  # killed during shutdown: it resumes from its checkpoint on the next start
        if state.status == "paused" and worker.outcome is None and self.stopping:
            return
        if worker.outcome == Outcome.STOPPED:  # it stopped as asked, but its own word of it never arrived
            try:
                self.record(RunEvent(run_id=worker.run_id, status="stopped", reason="stopped by request"))
                return
            except OSError as error:
                how = f"stopped, but the event log cannot take it: {_why(error)}"
        self.watch.lost_worker(worker.run_id, how)
        self.fail_run(worker.run_id, how)  # logged and recorded (or, on a full disk, marked failed)

    def command_worker(self, run_id: str, command: Command) -> None:
        """Send ``command`` to the run's worker; held until it has connected (its first message)
        when it is still starting.  Callers check that the run has a worker."""
        worker = self.workers.get(run_id)
        if worker is not None and not worker.connected:
            worker.pending.append(command)
            return
        self._worker_sock.send_multipart([run_id.encode(), encode_command(command)])

    def _worker_connected(self, worker: WorkerProcess) -> None:
        """The worker's first message arrived: it can be reached, so send what it was told meanwhile."""
        worker.connected = True
        held, worker.pending = worker.pending, []
        for command in held:
            self.command_worker(worker.run_id, command)

    async def resume_active_runs(self) -> None:
        """After a restart, every run that was running continues from its last checkpoint."""
        for state in list(self.runs.values()):
            if state.status in ("running", "interrupted") and state.run_id not in self.workers:
                log.info("run %s was %s at shutdown/crash: resuming", state.run_id, state.status)
                try:
                    await self.spawn_worker(state.run_id, resume=True)
                except CommandFailed as error:  # recorded (or marked) failed; the daemon serves on
                    log.error("%s", error)
        await self.dispatch()  # then the queue, in its order, into the slots left

    # -- worker messages --------------------------------------------------------------------
    async def relay_worker_messages(self) -> None:
        """Forever: take each worker message off the ROUTER (``daemon/worker_protocol.py``) and
        record its event, or note its exit outcome."""
        while True:
            frames = await self._worker_sock.recv_multipart()
            if len(frames) != 3:
                continue
            identity, kind, body = frames
            run_id = identity.decode(errors="replace")
            worker = self.workers.get(run_id)
            if worker is not None and not worker.connected:
                self._worker_connected(worker)
            if kind == WorkerFrame.EVENT:
                try:
                    self._worker_event(run_id, body)
                except OSError as error:  # the log cannot take it: stop the run, keep serving
                    self._log_full(run_id, error)
            elif kind == WorkerFrame.EXIT and worker is not None:
                worker.goodbye(decode_outcome(body))

    def _worker_event(self, run_id: str, body: bytes) -> None:
        try:
            event = decode_event(body)
        except ProtocolError as error:
            log.error("run %s: dropped an undecodable worker event: %s", run_id, error)
            return
        state = self.runs.get(run_id)
        if not event.run_id:  # the worker's identity names its run: an unstamped event is still its own
            event.run_id = run_id
        if state is None or event.run_id != run_id:
            log.error("run %s: dropped an event for run %r", run_id, event.run_id)
            return
        if is_replay(state, event):
            return
        if isinstance(event, RunEvent) and event.status in ("started",):
            return  # only the daemon starts runs
        if isinstance(event, StepEvent) and not event.run_tokens:
            event.run_tokens = run_tokens_at(state, event)  # run-wide, next to the stage's own count
        self.record(event)

    # -- housekeeping -----------------------------------------------------------------------
    async def housekeeping(self) -> None:
        """Forever, every ``RUN_JSON_INTERVAL_S`` (0.5 s): group-fsync the log when due, tick the watch (stalls),
        rewrite changed ``run.json`` files, and every ``RUN_JSON_CHECK_EVERY`` ticks restore missing ones.
        """
        ticks = 0
        while True:
            await asyncio.sleep(RUN_JSON_INTERVAL_S)
            try:
                self.eventlog.sync_if_due()
            except OSError as error:  # keep housekeeping alive; the next sync retries
                log.error("cannot fsync the event log: %s", error)
            self.watch.tick()
            ticks += 1
            if ticks % RUN_JSON_CHECK_EVERY == 0:  # a deleted or emptied run.json: rebuild it from the fold
                await self._restore_run_json()
            for run_id in list(self._dirty):
                self._write_run_json(self.runs[run_id])

    async def _restore_run_json(self) -> None:
        """Mark for rewriting every run whose ``run.json`` is missing or empty (a projection of
        the log: someone deleted or truncated it).  The stats run in a thread: many runs, slow disk."""
        run_ids = list(self.runs)  # taken on the loop: the thread only stats files

        def damaged() -> list[str]:
            out = []
            for run_id in run_ids:
                try:
                    if (self.layout.run_dir(run_id) / "run.json").stat().st_size == 0:
                        out.append(run_id)
                except FileNotFoundError:
                    out.append(run_id)
                except OSError:
                    continue
            return out

        for run_id in await asyncio.to_thread(damaged):
            log.warning("run %s: run.json is missing or empty; rewriting it from the event log", run_id)
            self._dirty.add(run_id)

    def status_line(self) -> str:
        """One line for systemd's STATUS: idle with run count and head seq, or each running run's stage and
        step/total plus the queue length."""
        active = [r for r in self.runs.values() if r.status == "running"]
        if not active:
            return f"idle; {len(self.runs)} runs, log at seq {self.eventlog.head}"
        parts = [f"{r.run_id} {r.current_stage} step {r.current_step}/{r.total_steps}" for r in active]
        waiting = sum(1 for r in self.runs.values() if r.status == "queued")
        return "training: " + "; ".join(parts) + (f"; {waiting} queued" if waiting else "")

    async def shutdown(self) -> None:
        """Checkpoint every running run and wait for the workers to exit (SIGTERM path)."""
        self.stopping = True
        for run_id in list(self.workers):
            self.command_worker(run_id, Command.SHUTDOWN)
        waits = [w.exited.wait() for w in self.workers.values()]
        if waits:
            log.info("waiting for %d worker(s) to checkpoint and exit", len(waits))
            done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=SHUTDOWN_GRACE_S)
            for worker in self.workers.values():
                if not worker.exited.is_set():
                    log.error("run %s: worker did not exit in %.0f s; killing it", worker.run_id, SHUTDOWN_GRACE_S)
                    worker.kill()
        # Let the worker socket drain the last events the workers sent before exiting.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain_workers(), timeout=1.0)
        self._record_interrupted()
        for run_id in list(self._dirty):
            self._write_run_json(self.runs[run_id])
        for task in list(self._tasks):
            task.cancel()
        self.eventlog.close()
        self.bus.close()
        self._worker_sock.close(linger=0)

    def _record_interrupted(self) -> None:
        """Runs still "running" when the daemon stops cleanly: say so in the log (and run.json),
        with the checkpoint they resume from on the next start, for readers without a daemon."""
        for state in list(self.runs.values()):
            if state.status != "running":
                continue
            step = state.last_checkpoint.step if state.last_checkpoint else 0
            try:
                self.record(RunEvent(run_id=state.run_id, status="interrupted", resume_step=step,
                                     reason=f"tritterd stopped; resumes from step {step} on its next start"))
            except OSError as error:
                log.error("run %s: cannot record the interruption: %s", state.run_id, error)

    def _log_full(self, run_id: str, error: OSError) -> None:
        """A worker event could not be logged: end that worker and fail the run with the reason.

        The log is the truth: ``tritterctl resume`` re-trains from the last logged checkpoint,
        and steps already logged are dropped as replays, so no step is lost or doubled.
        """
        worker = self.workers.get(run_id)
        state = self.runs.get(run_id)
        if worker is None or state is None or not state.active:
            log.error("run %s: dropped an event the log could not take: %s", run_id, error)
            return
        worker.kill()
        self.fail_run(run_id, f"tritterd cannot write its event log: {_why(error)}; "
                              f"free space, then: tritterctl resume {run_id}")

    async def _drain_workers(self) -> None:
        while await self._worker_sock.poll(100, zmq.POLLIN):
            frames = await self._worker_sock.recv_multipart()
            if len(frames) == 3 and frames[1] == WorkerFrame.EVENT:
                with contextlib.suppress(OSError):  # shutting down: a full log loses only this tail
                    self._worker_event(frames[0].decode(errors="replace"), frames[2])
