"""The control and catch-up endpoint: one ROUTER socket, one request in, one ``Reply`` out.

Whatever a client sends, the daemon answers (malformed input gets ``ok=False`` and a reason)
and keeps serving: no request can raise out of this loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import msgspec
import zmq
import zmq.asyncio

from tritter.daemon.remote import ServerKeys, bind
from tritter.daemon.extend import ExtendRefused, extended_config
from tritter.daemon.service import CommandFailed, Tritterd
from tritter.formats.hub_names import default_run_name, repo_id_problem
from tritter.daemon.worker_protocol import Command
from tritter.daemon.gpus import visible_gpu_count
from tritter.daemon.startcheck import check_start_paths
from tritter.protocol.config import validate_config
from tritter.recipe.budget import check_config as check_budgets
from tritter.protocol.control import (
    AnyRequest,
    Catchup,
    Checkpoint,
    Extend,
    Pause,
    Ping,
    Reply,
    Report,
    Resume,
    Runs,
    Start,
    Status,
    Stop,
    Upload,
)
from tritter.protocol.events import PROTOCOL_VERSION, RunEvent, UploadEvent
from tritter.protocol.state import RunState, is_held
from tritter.protocol.wire import ProtocolError, decode_as, encode

log = logging.getLogger("tritterd.api")

MAX_REQUEST_BYTES = 1 << 20
WORKER_EXIT_WAIT_S = 10.0
MAX_ATTEMPT = 1_000_000  # upload attempts a report may carry


class Api:
    """The daemon's request endpoint: ROUTER sockets (local ipc, plus CURVE tcp ones via ``add_remote``)
    answering control and catch-up requests with one ``Reply`` each.  Raises zmq.ZMQError when a bind fails.
    """

    def __init__(self, daemon: Tritterd, endpoints: list[str]) -> None:
        self.daemon = daemon
        self.sockets: list[zmq.asyncio.Socket] = []
        self._still_allowed: dict[zmq.asyncio.Socket, Callable[[zmq.Frame], bool]] = {}  # remote sockets only
        self._add(endpoints)

    def _add(self, endpoints: list[str], keys: ServerKeys | None = None) -> zmq.asyncio.Socket:
        sock: zmq.asyncio.Socket = self.daemon.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        bind(sock, endpoints, keys)
        self.sockets.append(sock)
        return sock

    def add_remote(self, endpoint: str, keys: ServerKeys, still_allowed: Callable[[zmq.Frame], bool] | None = None) -> None:
        """Also answer on ``endpoint`` (tcp), as a CURVE server with ``keys``; zmq.ZMQError when it cannot bind.
        ``still_allowed(frame)`` (is the CURVE key the sender's handshake was allowed with still authorized?) is
        asked per request, so a key removed from ``authorized/`` gets no answers on a connection it opened before
        (``Gatekeeper.allows``)."""
        sock = self._add([endpoint], keys)
        if still_allowed is not None:
            self._still_allowed[sock] = still_allowed

    async def answer_requests(self) -> None:
        """Forever: answer every request on every bound socket (local ipc, remote tcp)."""
        await asyncio.gather(*(self._answer_on(sock) for sock in self.sockets))

    async def _answer_on(self, sock: zmq.asyncio.Socket) -> None:
        # Each request is answered in its own task: one that waits (a start's data check on a slow
        # disk, an extend waiting for a worker to exit) holds up no other client.  A client has one
        # request in flight (clients/connection.py), so its replies cannot overtake each other.
        answering: set[asyncio.Task[None]] = set()
        still_allowed = self._still_allowed.get(sock)
        try:
            while True:
                if still_allowed is None:
                    frames = await sock.recv_multipart()
                else:  # frames, not bytes: their User-Id is the CURVE key of the sender
                    received = await sock.recv_multipart(copy=False)
                    if not still_allowed(received[-1]):
                        continue  # revoked since it connected: nothing, as for a refused handshake
                    frames = [frame.bytes for frame in received]
                if len(frames) < 2:
                    continue  # no identity to answer to
                task = asyncio.create_task(self._answer_one(sock, frames[0], frames[1:]))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            for task in list(answering):
                task.cancel()

    async def _answer_one(self, sock: zmq.asyncio.Socket, identity: bytes, body: list[bytes]) -> None:
        """Answer one request (``body``: its frames after the ``identity``) on ``sock``; never raises."""
        delimiter = [b""] if len(body) > 1 and body[0] == b"" else []  # a REQ client
        body = body[len(delimiter) :]
        reply = await self.answer(body)
        try:
            await sock.send_multipart([identity, *delimiter, encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as error:  # the client left; never let one client stall the daemon
            log.debug("could not reply to a client: %s", error)

    async def answer(self, body: list[bytes]) -> Reply:
        """The Reply to one request message (``body``: its frames after the identity/delimiter; exactly one expected).

        Never raises: a malformed message, an unknown run (LookupError), a refused command, an unwritable
        home (OSError) and any bug all become ``ok=False`` with a one-line ``error``; ``head`` is always set.
        """
        head = self.daemon.eventlog.head
        if len(body) != 1:
            return Reply(ok=False, error=f"expected one message frame, got {len(body)}", head=head)
        try:
            request = decode_as(body[0], AnyRequest)  # type: ignore[arg-type]
        except ProtocolError as error:
            return Reply(ok=False, error=f"bad request: {error}", head=head)
        try:
            reply = await self.handle(request)
        except (LookupError, CommandFailed) as error:
            reply = Reply(ok=False, error=str(error.args[0]))
        except OSError as error:  # the home is not writable (disk full, permissions): one clear line
            log.error("request %s failed: %s", type(request).__name__, error)
            where = f" ({error.filename})" if error.filename else ""
            reply = Reply(ok=False, error=f"tritterd cannot write to its home: {error.strerror or error}{where}")
        except Exception as error:  # a bug must not take the daemon down; say what happened
            log.exception("request %r failed", request)
            reply = Reply(ok=False, error=f"internal error: {type(error).__name__}: {error}")
        reply.head = self.daemon.eventlog.head
        return reply

    async def handle(self, request: AnyRequest) -> Reply:
        """Act on one decoded request and return its Reply (``head`` is filled in by ``answer``).

        Ping, Catchup (at most 10,000 events), Runs, Status, Start, Upload and Report are answered for
        any run; Stop, Pause, Resume, Checkpoint and Extend check the run's status and send its worker
        a Command, or queue/respawn it.  Raises LookupError for an unknown or ambiguous run, CommandFailed
        when a run cannot be started or respawned, OSError when the home cannot be written.
        """
        daemon = self.daemon
        if isinstance(request, Ping):
            return Reply(ok=True, message=f"tritterd pid {os.getpid()}")
        if isinstance(request, Catchup):
            limit = max(1, min(request.limit, 10_000))
            events = [msgspec.Raw(p) for p in daemon.eventlog.read_since(request.since, limit)]
            return Reply(ok=True, events=events)
        if isinstance(request, Runs):
            return Reply(ok=True, runs=sorted(daemon.runs.values(), key=lambda r: r.started))
        if isinstance(request, Status):
            return Reply(ok=True, runs=[daemon.find_run(request.run)])
        if isinstance(request, Start):
            return await self._start(request)
        if isinstance(request, Upload):
            return self._upload(request)
        if isinstance(request, Report):
            return self._report(request)
        state = daemon.find_run(request.run)
        worker = daemon.workers.get(state.run_id)
        if daemon.stopping:
            return Reply(ok=False, error="tritterd is shutting down")
        if isinstance(request, Extend):
            try:
                config = extended_config(state, request)
            except ExtendRefused as error:
                return Reply(ok=False, error=str(error))
            if worker:  # it reported completed and is still exiting: let it go first (it holds the slot)
                try:
                    await asyncio.wait_for(worker.exited.wait(), WORKER_EXIT_WAIT_S)
                except asyncio.TimeoutError:
                    return Reply(ok=False, error=f"run {state.run_id}: its last worker has not exited yet; try again")
            message = await daemon.resume_or_queue(state.run_id, config=config)
            return Reply(ok=True, run_id=state.run_id, message=f"extending to {config.end}: {message}")
        if isinstance(request, Stop):
            if not state.active:
                return Reply(ok=False, error=f"run {state.run_id} already {state.status}")
            if state.status == "queued" or is_held(state):
                daemon.record(RunEvent(run_id=state.run_id, status="stopped", reason="stopped by request"))
                return Reply(ok=True, run_id=state.run_id, message="stopped (removed from the queue)")
            if worker:
                daemon.command_worker(state.run_id, Command.STOP)
                return Reply(ok=True, run_id=state.run_id, message=_after_checkpoint("stopping", state))
            daemon.record(RunEvent(run_id=state.run_id, status="stopped", reason="stopped by request"))
            return Reply(ok=True, run_id=state.run_id, message="stopped")
        if isinstance(request, Pause):
            if state.status == "queued":
                place = state.queue_position
                daemon.hold(state.run_id)
                return Reply(ok=True, run_id=state.run_id,
                             message=f"held in the queue at position {place} (resume puts it back there)")
            if state.status != "running" or worker is None:
                return Reply(ok=False, error=f"run {state.run_id} is {state.status}, not running")
            daemon.command_worker(state.run_id, Command.PAUSE)
            return Reply(ok=True, run_id=state.run_id, message=_after_checkpoint("pausing", state))
        if isinstance(request, Resume):
            if state.status == "completed":
                return Reply(ok=False, error=f"run {state.run_id} already completed")
            if state.status == "running" and worker is not None:
                return Reply(ok=False, error=f"run {state.run_id} is already running")
            if state.status == "queued":
                return Reply(ok=False, error=f"run {state.run_id} is already queued (position {state.queue_position})")
            # "running" with no worker (its start could not be completed) or "interrupted": respawn.
            if worker and state.status == "paused":
                daemon.command_worker(state.run_id, Command.RESUME)  # it holds the model: go on at once
                return Reply(ok=True, run_id=state.run_id, message="resuming")
            if worker:  # it reported failed/stopped and is still exiting: let it go first
                try:
                    await asyncio.wait_for(worker.exited.wait(), WORKER_EXIT_WAIT_S)
                except asyncio.TimeoutError:
                    return Reply(ok=False, error=f"run {state.run_id}: its last worker has not exited yet; try again")
            message = await daemon.resume_or_queue(state.run_id)  # from its last checkpoint, when a slot is free
            return Reply(ok=True, run_id=state.run_id, message=message)
        if isinstance(request, Checkpoint):
            if worker is None and state.status in ("running", "interrupted"):
                return Reply(ok=False, error=f"run {state.run_id} has no worker; start one with: tritterctl resume {state.run_id}")
            if worker is None or not state.active:
                return Reply(ok=False, error=f"run {state.run_id} is {state.status}, nothing to checkpoint")
            daemon.command_worker(state.run_id, Command.CHECKPOINT)
            return Reply(ok=True, run_id=state.run_id, message="checkpoint requested")
        return Reply(ok=False, error=f"unsupported request {type(request).__name__}")

    async def _start(self, request: Start) -> Reply:
        config = request.config
        problem = validate_config(config) or check_budgets(config)  # the client checked too; a remote one may not
        if problem is None and config.hf_user:  # the upload's repo id: refuse now, not after training
            problem = repo_id_problem(config.hf_user, config.name or default_run_name(config.start, config.end))
        if problem is None:  # stat, sniff the corpus, load the tokenizer: in a thread, 60 s at most (daemon/startcheck.py)
            problem = await check_start_paths(config)
        if problem is None and not config.cuda and config.nproc > (os.cpu_count() or 1):
            problem = f"--nproc {config.nproc} is more than the {os.cpu_count()} CPU cores of the daemon's machine"
        gpus = visible_gpu_count() if config.cuda else 0
        if problem is None and config.cuda and gpus == 0:
            problem = "--cuda was given but this machine has no NVIDIA GPU"
        elif problem is None and config.cuda and config.nproc > gpus:
            problem = f"--nproc {config.nproc} is more than the {gpus} GPU(s) the daemon's machine shows (one rank per GPU)"
        if problem is None and self.daemon.stopping:
            problem = "tritterd is shutting down"
        if problem:
            return Reply(ok=False, error=problem)
        run_id = await self.daemon.start_run(config)
        return Reply(ok=True, run_id=run_id, message="started")

    def _upload(self, request: Upload) -> Reply:
        """``tritterctl upload``: record ``requested`` for the stage(s); tritter-upload does the rest."""
        daemon = self.daemon
        state = daemon.find_run(request.run)
        if not state.config.hf_user:
            return Reply(ok=False, error=f"run {state.run_id} has no Hugging Face user (start runs with --upload --hf-user USER)")
        done = [s for s in state.stages if s.status == "completed"]
        if request.stage is not None:
            if request.stage not in state.config.stages():
                stages = ", ".join(state.config.stages())
                return Reply(ok=False, error=f"run {state.run_id} has no stage {request.stage!r} (its stages: {stages})")
            done = [s for s in done if s.stage == request.stage]
            if not done:
                return Reply(ok=False, error=f"stage {request.stage} of run {state.run_id} has not completed yet")
        elif not done:
            return Reply(ok=False, error=f"run {state.run_id} has no completed stage to upload yet")
        if daemon.stopping:
            return Reply(ok=False, error="tritterd is shutting down")
        if problem := repo_id_problem(state.config.hf_user, state.run_name):  # a run from before the check at start
            return Reply(ok=False, error=problem)
        repo = f"{state.config.hf_user}/{state.run_name}"
        for stage in done:
            daemon.record(
                UploadEvent(run_id=state.run_id, stage=stage.stage, status="requested", repo=repo,
                            revision=stage.stage, reason="tritterctl upload")
            )
        names = ", ".join(s.stage for s in done)
        return Reply(ok=True, run_id=state.run_id, message=f"upload of {names} to {repo} requested")

    def _report(self, request: Report) -> Reply:
        """A sink's outcome: checked against the fold, then recorded like any event."""
        event = request.event
        state = self.daemon.runs.get(event.run_id)
        if state is None:
            return Reply(ok=False, error=f"no run {event.run_id!r}")
        if not any(s.stage == event.stage and s.status == "completed" for s in state.stages):
            return Reply(ok=False, error=f"stage {event.stage!r} of run {event.run_id} has not completed")
        if event.status == "requested":
            return Reply(ok=False, error="a report cannot request an upload (use tritterctl upload)")
        if not 0 <= event.attempt <= MAX_ATTEMPT:
            return Reply(ok=False, error=f"report attempt {event.attempt} is out of range (0 to {MAX_ATTEMPT})")
        if event.v > PROTOCOL_VERSION:
            return Reply(ok=False, error=f"report uses protocol v{event.v}; this tritterd understands v{PROTOCOL_VERSION}")
        event.seq, event.ts, event.v = 0, 0.0, PROTOCOL_VERSION  # the log numbers and stamps it
        self.daemon.record(event)
        return Reply(ok=True, run_id=event.run_id, message=f"recorded seq {event.seq}")

    def close(self) -> None:
        """Close every socket at once (linger 0: unsent replies are dropped)."""
        for sock in self.sockets:
            sock.close(linger=0)


def _after_checkpoint(doing: str, state: RunState) -> str:
    """What a stop or pause of a training worker will do: checkpoint first, unless no step of this
    run has trained yet (it is still preparing its data), when there is nothing to save."""
    if state.current_step == 0 and state.last_checkpoint is None:
        return f"{doing} (no step trained yet, so nothing to checkpoint)"
    return f"{doing} (after a checkpoint)"
