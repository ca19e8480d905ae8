"""Typed events: everything that happens in a run, as recorded in the daemon's log.

Every event carries ``seq`` (global, from 1, contiguous, assigned by the daemon when it
appends to its log), ``ts`` (unix seconds), ``run_id``, ``kind`` (the msgspec tag, also the
ZeroMQ topic) and the protocol version ``v``.  Producers (the training worker) leave
``seq`` at 0; only the daemon's log gives out sequence numbers.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from tritter.protocol.config import RunConfig

PROTOCOL_VERSION = 1

RunStatus = Literal["started", "paused", "resumed", "completed", "failed", "stopped"]
StageStatus = Literal["started", "completed"]
Phase = Literal["warmup", "full", "predict", "correct"]
UploadStatus = Literal["requested", "started", "completed", "failed"]


class Event(msgspec.Struct, tag_field="kind", kw_only=True, omit_defaults=False):
    seq: int = 0
    ts: float = 0.0
    run_id: str = ""
    v: int = PROTOCOL_VERSION

    @property
    def kind(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class RunEvent(Event, tag="run"):
    """A run's lifecycle.  ``started`` carries the config; ``resumed`` the step it resumed from."""

    status: RunStatus
    run_name: str = ""
    config: RunConfig | None = None
    reason: str = ""
    resume_step: int | None = None


class StageEvent(Event, tag="stage"):
    """A growth stage (one preset) started or completed.

    On ``started`` ``eval_loss`` is measured right after growth, before any step at the new size.
    """

    status: StageStatus
    stage: str
    index: int
    step: int
    params: int
    tokens: int = 0
    eval_loss: float | None = None
    grown_from: str | None = None
    export_path: str | None = None


class PhaseEvent(Event, tag="phase"):
    phase: Phase
    step: int
    stage: str
    reason: str = ""


class StepEvent(Event, tag="step"):
    """One optimizer step: exactly the fields of a ``metrics.jsonl`` line (plus the envelope)."""

    step: int
    loss: float
    gradient_norm: float
    phase: Phase
    was_predicted: bool
    prediction_error: float | None
    step_time_ms: float
    stage: str
    lr: float
    tokens: int
    tokens_per_s: float


class CheckpointEvent(Event, tag="checkpoint"):
    path: str  # relative to the run directory
    step: int
    stage: str
    bytes: int
    sha256: str
    reason: str = "periodic"  # periodic | stage | manual | stop | shutdown


class UploadEvent(Event, tag="upload"):
    """A stage's Hugging Face upload: ``requested`` (``tritterctl upload``), then from the uploader
    (``tritter-upload``, through the daemon's ``Report`` request) ``started`` / ``completed`` /
    ``failed``.  ``attempt`` counts tries from 1; a ``failed`` with ``will_retry`` is followed by
    another attempt, one without is final until the next ``requested``."""

    stage: str
    status: UploadStatus
    repo: str = ""  # USER/RUN_NAME
    revision: str = ""  # the branch (the stage name)
    url: str = ""  # the uploaded revision's page (completed)
    commit: str = ""  # the commit id on the hub (completed)
    attempt: int = 0
    error: str = ""  # why (failed); never contains the token
    will_retry: bool = False
    reason: str = ""  # who asked (requested): "tritterctl upload", ...


AnyEvent = Union[RunEvent, StageEvent, PhaseEvent, StepEvent, CheckpointEvent, UploadEvent]
EVENT_KINDS: tuple[str, ...] = ("run", "stage", "phase", "step", "checkpoint", "upload")

# Fields of a metrics.jsonl line, in order (the seed's StepMetrics plus stage/lr/tokens/ts).
METRICS_FIELDS: tuple[str, ...] = (
    "step",
    "loss",
    "gradient_norm",
    "phase",
    "was_predicted",
    "prediction_error",
    "step_time_ms",
    "stage",
    "lr",
    "tokens",
    "tokens_per_s",
    "ts",
)


def metrics_record(event: StepEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in METRICS_FIELDS}
