"""tritterd's core: the event log, the fold of it, the bus, and the workers, tied together.

Every event, from a worker or from the daemon itself, goes through ``record``: append to
the log (which numbers it), fold into run state, publish, refresh ``run.json``.  Worker
events that repeat what the log already holds (steps re-trained after resuming from a
checkpoint) are dropped there, which is what makes metrics exactly-once across crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import zmq
import zmq.asyncio

from tritter.daemon.bus import Bus
from tritter.daemon.eventlog import EventLog
from tritter.daemon.runfiles import write_run_json
from tritter.daemon.worker_handle import WorkerProcess
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AnyEvent, CheckpointEvent, PhaseEvent, RunEvent, StageEvent, StepEvent
from tritter.protocol.home import Layout
from tritter.protocol.state import RunState, fold
from tritter.protocol.wire import ProtocolError, decode_event

log = logging.getLogger("tritterd")

RUN_JSON_INTERVAL_S = 0.5
SHUTDOWN_GRACE_S = 120.0


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def is_replay(state: RunState, event: AnyEvent) -> bool:
    """Whether a worker event repeats history the log already has (re-training after a resume)."""
    if isinstance(event, StepEvent | PhaseEvent):
        return event.step <= state.current_step
    if isinstance(event, CheckpointEvent):
        # Same step, other reason (a manual checkpoint of a paused run) is news; same reason is a re-run.
        last = state.last_checkpoint
        return last is not None and (
            event.step < last.step or (event.step == last.step and event.reason == last.reason)
        )
    if isinstance(event, RunEvent):
        # The daemon announces a resume when it respawns a worker; the worker's own word is
        # news only when it had to fall back to another checkpoint.
        return event.status == "resumed" and event.resume_step is not None and event.resume_step == state.resumed_from
    if isinstance(event, StageEvent):
        for stage in state.stages:
            if stage.index == event.index:
                return event.status == "started" or stage.status == "completed"
        return False
    return False


class Tritterd:
    def __init__(self, layout: Layout, ctx: zmq.asyncio.Context) -> None:
        self.layout = layout
        self.ctx = ctx
        layout.runs.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(layout.log)
        self.runs: dict[str, RunState] = {}
        for event in self.log.replay():
            fold(self.runs, event)
        self.bus = Bus(ctx, [layout.events_endpoint])
        self.workers: dict[str, WorkerProcess] = {}
        self.stopping = False
        self._dirty: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker_sock = ctx.socket(zmq.ROUTER)
        self._worker_sock.setsockopt(zmq.LINGER, 0)
        self._worker_sock.setsockopt(zmq.RCVHWM, 0)
        self._worker_sock.bind(layout.worker_endpoint)
        for state in self.runs.values():
            write_run_json(layout.run_dir(state.run_id), state)
        log.info("replayed %d events (%d runs) from %s", self.log.head, len(self.runs), layout.log)

    # -- the one path for events ------------------------------------------------------------
    def record(self, event: AnyEvent) -> None:
        payload = self.log.append(event)
        state = fold(self.runs, event)
        self.bus.publish(event.kind, event.seq, payload)
        if state is not None:
            if isinstance(event, StepEvent):
                self._dirty.add(state.run_id)  # steps are many: run.json follows them every 0.5 s
            else:
                write_run_json(self.layout.run_dir(state.run_id), state)
                self._dirty.discard(state.run_id)

    def _spawn_task(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- runs -------------------------------------------------------------------------------
    def find_run(self, ref: str | None) -> RunState:
        """A run by id, unique id prefix or name; None = the newest run."""
        if ref is None:
            if not self.runs:
                raise LookupError("there are no runs yet (start one with: tritterctl start)")
            return max(self.runs.values(), key=lambda r: r.started)
        if not ref.strip():
            raise LookupError("an empty run reference matches nothing (give a run id, id prefix or name)")
        if ref in self.runs:
            return self.runs[ref]
        matches = [r for r in self.runs.values() if r.run_id.startswith(ref)] or [
            r for r in self.runs.values() if r.run_name == ref
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(sorted(r.run_id for r in matches))
            raise LookupError(f"run {ref!r} is ambiguous: {ids}")
        raise LookupError(f"no run {ref!r} (see: tritterctl runs)")

    async def start_run(self, config: RunConfig) -> str:
        run_id = new_run_id()
        while run_id in self.runs:
            run_id = new_run_id()
        if not config.name:
            config.name = f"tritter-{config.start}-{config.end}"
        self.record(RunEvent(run_id=run_id, status="started", run_name=config.name, config=config))
        await self.spawn_worker(run_id)
        return run_id

    async def spawn_worker(self, run_id: str, resume: bool = False) -> None:
        state = self.runs[run_id]
        if resume:
            step = state.last_checkpoint.step if state.last_checkpoint else 0
            self.record(RunEvent(run_id=run_id, status="resumed", resume_step=step))
        worker = await WorkerProcess.spawn(
            run_id, state.config, self.layout.run_dir(run_id), self.layout.cache, self.layout.worker_endpoint
        )
        self.workers[run_id] = worker
        self._spawn_task(worker.watch(self._worker_exited))

    def _worker_exited(self, worker: WorkerProcess, how: str) -> None:
        if self.workers.get(worker.run_id) is worker:
            del self.workers[worker.run_id]
        state = self.runs.get(worker.run_id)
        if state is None or not state.active or worker.outcome == "shutdown":
            log.info("run %s: %s (%s)", worker.run_id, how, worker.outcome or "no outcome")
            return
        if self.stopping and state.status == "running":
            return  # killed during shutdown: it resumes from its checkpoint on the next start
        if state.status == "paused" and worker.outcome is None and self.stopping:
            return
        log.error("run %s failed: %s", worker.run_id, how)
        self.record(RunEvent(run_id=worker.run_id, status="failed", reason=how))

    def command_worker(self, run_id: str, command: str) -> None:
        self._worker_sock.send_multipart([run_id.encode(), command.encode()])

    async def resume_active_runs(self) -> None:
        """After a restart, every run that was running continues from its last checkpoint."""
        for state in list(self.runs.values()):
            if state.status == "running" and state.run_id not in self.workers:
                log.info("run %s was running at shutdown/crash: resuming", state.run_id)
                await self.spawn_worker(state.run_id, resume=True)

    # -- worker messages --------------------------------------------------------------------
    async def serve_workers(self) -> None:
        while True:
            frames = await self._worker_sock.recv_multipart()
            if len(frames) != 3:
                continue
            identity, kind, body = frames
            run_id = identity.decode(errors="replace")
            if kind == b"event":
                self._worker_event(run_id, body)
            elif kind == b"exit" and run_id in self.workers:
                self.workers[run_id].goodbye(body.decode(errors="replace"))

    def _worker_event(self, run_id: str, body: bytes) -> None:
        try:
            event = decode_event(body)
        except ProtocolError as error:
            log.error("run %s: dropped an undecodable worker event: %s", run_id, error)
            return
        state = self.runs.get(run_id)
        if state is None or event.run_id != run_id:
            log.error("run %s: dropped an event for run %r", run_id, event.run_id)
            return
        if is_replay(state, event):
            return
        if isinstance(event, RunEvent) and event.status in ("started",):
            return  # only the daemon starts runs
        self.record(event)

    # -- housekeeping -----------------------------------------------------------------------
    async def housekeeping(self) -> None:
        while True:
            await asyncio.sleep(RUN_JSON_INTERVAL_S)
            self.log.sync_if_due()
            for run_id in list(self._dirty):
                write_run_json(self.layout.run_dir(run_id), self.runs[run_id])
            self._dirty.clear()

    def status_line(self) -> str:
        active = [r for r in self.runs.values() if r.status == "running"]
        if not active:
            return f"idle; {len(self.runs)} runs, log at seq {self.log.head}"
        parts = [f"{r.run_id} {r.current_stage} step {r.current_step}/{r.total_steps}" for r in active]
        return "training: " + "; ".join(parts)

    async def shutdown(self) -> None:
        """Checkpoint every running run and wait for the workers to exit (SIGTERM path)."""
        self.stopping = True
        for run_id in list(self.workers):
            self.command_worker(run_id, "shutdown")
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
        for run_id in self._dirty:
            write_run_json(self.layout.run_dir(run_id), self.runs[run_id])
        for task in list(self._tasks):
            task.cancel()
        self.log.close()
        self.bus.close()
        self._worker_sock.close(linger=0)

    async def _drain_workers(self) -> None:
        while await self._worker_sock.poll(100, zmq.POLLIN):
            frames = await self._worker_sock.recv_multipart()
            if len(frames) == 3 and frames[1] == b"event":
                self._worker_event(frames[0].decode(errors="replace"), frames[2])
