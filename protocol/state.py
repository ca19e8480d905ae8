"""Run state as the fold of events.

The daemon's state is exactly ``fold`` applied to its log from seq 1; clients (the monitor,
``tritterctl``) fold the same events and get the same picture.  ``run.json`` is a ``RunState``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from tritter.protocol.config import RunConfig
from tritter.protocol.events import (
    AlertEvent,
    AnyEvent,
    CheckpointEvent,
    EvalEvent,
    SampleEvent,
    PhaseEvent,
    PrepareEvent,
    RunEvent,
    StageEvent,
    StepEvent,
    UploadEvent,
)

RunLifecycle = Literal["running", "paused", "completed", "failed", "stopped", "interrupted", "queued"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "stopped"})


class StageState(msgspec.Struct, kw_only=True):
    """One growth stage of a run as folded from its stage and upload events.

    Steps are optimizer steps of the run (``end_step`` None while running), ``tokens`` training
    tokens of the stage, eval losses in nats/token on the held-out set (at the stage's start, right
    after growth, and at its end), ``params`` the model's parameter count.
    """

    stage: str
    index: int
    status: Literal["running", "completed"] = "running"
    params: int = 0
    start_step: int = 0
    end_step: int | None = None
    tokens: int = 0
    eval_loss_start: float | None = None
    eval_loss_end: float | None = None
    grown_from: str | None = None
    export_path: str | None = None
    # Hugging Face upload (tritter-upload): None until one is requested or started.
    upload_status: Literal["requested", "started", "completed", "failed"] | None = None
    upload_repo: str = ""
    upload_revision: str = ""
    upload_url: str = ""
    upload_commit: str = ""
    upload_attempt: int = 0
    upload_error: str = ""
    upload_will_retry: bool = False
    upload_seq: int = 0  # seq of the stage's latest upload event


class CheckpointRef(msgspec.Struct, kw_only=True):
    """A saved checkpoint as run state keeps it: ``path`` relative to the run folder, optimizer ``step``,
    ``bytes``, hex ``sha256``, ``reason``."""

    path: str
    step: int
    stage: str
    bytes: int
    sha256: str
    reason: str = ""


MAX_ALERTS = 20


def stage_status(run: "RunState", stage: StageState) -> str:
    """What to show for ``stage`` of ``run``: ``completed``, else ``running`` while the run trains,
    else the run's own status (a failed run's unfinished stage is ``failed``, not ``running``)."""
    if stage.status == "completed" or run.status == "running":
        return stage.status
    return run.status


class RunState(msgspec.Struct, kw_only=True):
    """One run as folded from the event log (``fold``): status, progress and monitoring.

    Steps are optimizer steps, tokens training tokens, losses nats/token, ``started``/``updated``
    unix seconds, ``step_ms`` milliseconds per optimizer step; ``last_seq`` is the newest event folded in.
    """

    run_id: str
    run_name: str
    status: RunLifecycle = "running"
    config: RunConfig = msgspec.field(default_factory=RunConfig)
    current_stage: str = ""
    current_step: int = 0
    total_steps: int = 0
    current_loss: float | None = None
    current_phase: str = ""
    total_forward: int = 0
    total_backward: int = 0
    predicted_steps: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    tokens: int = 0  # training tokens of the current stage (the step events' ``tokens``)
    run_tokens: int = 0  # training tokens of the whole run, every stage (``run_tokens``)
    tokens_per_s: float = 0.0
    mfu: float | None = None  # the last step's model FLOPs utilisation (StepEvent.mfu)
    # Recent time per optimizer step, ms: an exponential moving average (weight PACE_ALPHA) of the
    # step events' step_time_ms, which the worker measures with a monotonic clock around the step
    # itself, so a pause, a daemon restart or a clock change never inflates it.  0 = no step yet.
    step_ms: float = 0.0
    started: float = 0.0
    updated: float = 0.0
    error: str = ""
    resumed_from: int | None = None  # the checkpoint step of the latest resume
    stages: list[StageState] = []
    last_checkpoint: CheckpointRef | None = None
    last_seq: int = 0
    # Monitoring (eval/sample/alert events): the latest periodic eval, and alerts.
    eval_loss: float | None = None  # held-out loss (nats/token) of the latest periodic eval
    eval_perplexity: float | None = None
    eval_step: int = 0  # step of the latest periodic eval (0: none yet)
    sample_step: int = 0  # step of the latest sample event
    alert_count: int = 0
    alerts: list[AlertEvent] = []  # the newest MAX_ALERTS alert events, oldest first
    prepare: PrepareEvent | None = None  # the latest prepare event: corpus preparation, then the data identity
    # The run queue (tritterd --slots; see queue_order): the seq of the event that put the run in
    # line (0 = not in line; kept while a queued run is held by pause), its 1-based place among
    # the queued runs (0 = not queued), and whether it ever started (so leaving the queue is a
    # start or a resume).
    queued_seq: int = 0
    queue_position: int = 0
    launched: bool = False

    @property
    def active(self) -> bool:
        """Whether the run can still change (status not completed, failed or stopped)."""
        return self.status not in TERMINAL


def queue_key(state: RunState) -> tuple[int, int]:
    """Place of a queued run: higher ``config.priority`` first, then first come (``queued_seq``)."""
    return (-state.config.priority, state.queued_seq)


def queue_order(runs: Iterable[RunState]) -> list[RunState]:
    """The runs waiting for a slot (status ``queued``), the next to start first."""
    return sorted((r for r in runs if r.status == "queued"), key=queue_key)


def is_held(state: RunState) -> bool:
    """A queued run that was paused: it keeps its place in line but does not start until resumed."""
    return state.status == "paused" and state.queued_seq > 0


def _renumber_queue(runs: dict[str, RunState]) -> None:
    for run in runs.values():
        run.queue_position = 0
    for place, run in enumerate(queue_order(runs.values()), start=1):
        run.queue_position = place


def _apply_queue(state: RunState, event: RunEvent) -> None:
    """Where a run event moves the run with respect to tritterd's queue."""
    if event.status == "queued":
        if state.queued_seq == 0:  # a held run coming back keeps its place
            state.queued_seq = event.seq
        if not state.started:
            state.started = event.ts  # when it was submitted; ``started`` again when it starts
    elif event.status == "paused":
        if state.status != "queued":
            state.queued_seq = 0  # paused while training: a later resume queues it anew
    else:
        state.queued_seq = 0
    if event.status == "started":
        state.launched = True


def _apply_run(state: RunState, event: RunEvent) -> None:
    _apply_queue(state, event)
    if event.config is not None and event.status in ("queued", "resumed"):  # a new or extended run
        state.config = event.config
        state.total_steps = event.config.total_steps()
    if event.status == "queued":
        state.status = "queued"
        state.error = ""
    elif event.status in ("started", "resumed"):
        state.status = "running"
        state.error = ""
        if event.resume_step is not None:
            state.resumed_from = event.resume_step
    elif event.status == "paused":
        state.status = "paused"
        state.error = event.reason  # why, when the run paused itself (a full disk)
    else:
        state.status = event.status
        state.error = event.reason if event.status == "failed" else ""
    if event.status == "started":
        state.started = event.ts
        if event.config is not None:
            state.config = event.config
            state.total_steps = event.config.total_steps()


def _stage(state: RunState, index: int, name: str) -> StageState:
    for stage in state.stages:
        if stage.index == index:
            return stage
    stage = StageState(stage=name, index=index)
    state.stages.append(stage)
    return stage


def _apply_stage(state: RunState, event: StageEvent) -> None:
    stage = _stage(state, event.index, event.stage)
    stage.params = event.params
    if event.status == "started":
        stage.start_step = event.step
        stage.eval_loss_start = event.eval_loss
        stage.grown_from = event.grown_from
        state.current_stage = event.stage
    else:
        stage.status = "completed"
        stage.end_step = event.step
        stage.tokens = event.tokens
        stage.eval_loss_end = event.eval_loss
        stage.export_path = event.export_path


PACE_ALPHA = 0.1  # ~20 recent steps carry most of the weight: smooth, yet follows a stage change


def run_tokens_at(state: RunState, event: StepEvent) -> int:
    """Run-wide tokens after ``event``: the tokens of every earlier stage plus ``event.tokens``.

    ``state`` is the run before (or while) folding ``event``; stages are in ``state.stages``
    in order, the current one last.
    """
    earlier = sum(s.tokens for s in state.stages if s.stage != event.stage and s.status == "completed")
    return earlier + event.tokens


def _apply_step(state: RunState, event: StepEvent) -> None:
    state.current_step = event.step
    state.current_loss = event.loss
    state.current_phase = event.phase
    state.current_stage = event.stage
    state.total_forward += 1
    if event.was_predicted:
        state.predicted_steps += 1
    else:
        state.total_backward += 1
    state.tokens = event.tokens
    state.run_tokens = event.run_tokens or run_tokens_at(state, event)
    state.tokens_per_s = event.tokens_per_s
    state.mfu = event.mfu
    state.step_ms = event.step_time_ms if state.step_ms <= 0 else (
        (1 - PACE_ALPHA) * state.step_ms + PACE_ALPHA * event.step_time_ms)
    if state.best_loss is None or event.loss < state.best_loss:
        state.best_loss = event.loss
        state.best_step = event.step
    if state.stages:
        state.stages[-1].tokens = event.tokens


def _apply_upload(state: RunState, event: UploadEvent) -> None:
    for stage in state.stages:
        if stage.stage == event.stage:
            break
    else:
        return  # an upload for a stage this run never had: nothing to attach it to
    stage.upload_status = event.status
    stage.upload_attempt = event.attempt
    stage.upload_will_retry = event.will_retry
    stage.upload_seq = event.seq
    if event.repo:
        stage.upload_repo = event.repo
    if event.revision:
        stage.upload_revision = event.revision
    if event.status == "completed":
        stage.upload_url = event.url
        stage.upload_commit = event.commit
        stage.upload_error = ""
    elif event.status == "failed":
        stage.upload_error = event.error
    elif event.status == "requested":
        stage.upload_error = ""


def _apply_alert(state: RunState, event: AlertEvent) -> None:
    state.alert_count += 1
    state.alerts.append(event)
    del state.alerts[:-MAX_ALERTS]


def fold(runs: dict[str, RunState], event: AnyEvent) -> RunState | None:
    """Apply one event to ``runs`` (in place) and return the run it touched."""
    state = runs.get(event.run_id)
    if state is None:
        if not isinstance(event, RunEvent):
            return None  # an event for a run we never saw start: nothing to attach it to
        state = runs[event.run_id] = RunState(run_id=event.run_id, run_name=event.run_name)
    if isinstance(event, RunEvent):
        _apply_run(state, event)
        _renumber_queue(runs)
    elif isinstance(event, StageEvent):
        _apply_stage(state, event)
    elif isinstance(event, StepEvent):
        _apply_step(state, event)
    elif isinstance(event, PhaseEvent):
        state.current_phase = event.phase
    elif isinstance(event, UploadEvent):
        _apply_upload(state, event)
    elif isinstance(event, EvalEvent):
        state.eval_loss, state.eval_perplexity, state.eval_step = event.loss, event.perplexity, event.step
    elif isinstance(event, SampleEvent):
        state.sample_step = event.step
    elif isinstance(event, AlertEvent):
        _apply_alert(state, event)
    elif isinstance(event, PrepareEvent):
        state.prepare = event
    elif isinstance(event, CheckpointEvent) and event.status == "saved":  # a deletion is not a resume point
        state.last_checkpoint = CheckpointRef(
            path=event.path, step=event.step, stage=event.stage, bytes=event.bytes, sha256=event.sha256,
            reason=event.reason,
        )
    state.updated = event.ts
    state.last_seq = event.seq
    return state
