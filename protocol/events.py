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

# interrupted: the daemon stopped cleanly (SIGTERM) while the run trained; it resumes from
# ``resume_step`` (its last checkpoint) on the next start, with a ``resumed`` event.
# queued: started beyond tritterd's free slots (--slots); it starts in order (priority, then
# first come) when slots free up, with a ``started`` (or, for a run that ran before, ``resumed``) event.
RunStatus = Literal["started", "paused", "resumed", "completed", "failed", "stopped", "interrupted", "queued"]
StageStatus = Literal["started", "completed"]
Phase = Literal["warmup", "full", "predict", "correct"]
UploadStatus = Literal["requested", "started", "completed", "failed"]
CheckpointStatus = Literal["saved", "deleted"]


class Event(msgspec.Struct, tag_field="kind", kw_only=True, omit_defaults=False):
    """Base of every event: the envelope ``seq`` (from 1, 0 until the daemon logs it), ``ts``
    (unix seconds), ``run_id`` and protocol version ``v``; the subclass's tag is its ``kind``.
    """

    seq: int = 0
    ts: float = 0.0
    run_id: str = ""
    v: int = PROTOCOL_VERSION

    @property
    def kind(self) -> str:
        """The event's kind (its msgspec tag, e.g. ``"step"``), also its ZeroMQ topic."""
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
    # Whether the training model runs through torch.compile (on ``started``: as configured; on
    # ``completed``: what actually ran, False after a fallback to eager, with ``note`` saying why).
    compiled: bool | None = None
    note: str = ""
    # The stage's global batch (recipe/budget.py), on ``started``: sequences per forward/backward on
    # each process, micro-batches accumulated per optimizer step, tokens per optimizer step, and the
    # stage's optimizer steps (from --steps, or from --tokens / tokens_per_step).  0 = not reported.
    micro_batch: int = 0
    accum_steps: int = 0
    tokens_per_step: int = 0
    steps: int = 0


class PhaseEvent(Event, tag="phase"):
    """The hybrid controller changed phase at optimizer step ``step`` of stage ``stage``
    (``warmup``, ``full``, ``predict`` or ``correct``), with ``reason`` saying why.
    """

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
    tokens: int  # training tokens since the start of the current stage (this step included)
    tokens_per_s: float
    # Training tokens since the start of the run, all stages (this step included); filled in by
    # the daemon from the completed stages when it logs the step (0 only in logs older than it).
    run_tokens: int = 0
    # Model FLOPs utilisation of the step (0..1): tokens/s x training FLOPs per token (6N + 12LhdT,
    # PaLM appendix B; a third of that for a predicted, forward-only step) / the GPUs' dense bf16
    # peak.  None on CPU and on a GPU whose peak tritter does not know (TRITTER_PEAK_TFLOPS sets it).
    mfu: float | None = None


class CheckpointEvent(Event, tag="checkpoint"):
    """A checkpoint file was saved (durable) or deleted by retention.

    ``path`` is relative to the run directory, ``step`` the optimizer step it holds, ``bytes`` its
    size in bytes and ``sha256`` its hex digest; ``reason``: periodic, stage, manual, stop or shutdown.
    """

    path: str  # relative to the run directory
    step: int
    stage: str
    bytes: int
    sha256: str
    reason: str = "periodic"  # periodic | stage | manual | stop | shutdown
    # saved: the file is durable; deleted: retention removed it (--keep-checkpoints; bytes/sha256 of
    # the file as it was, reason says why it was not kept).  Older logs have no status: saved.
    status: CheckpointStatus = "saved"


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


# -- monitoring (issue 16): periodic eval, samples, system stats, alerts ----------------------
AlertLevel = Literal["info", "warning", "critical"]


class EvalEvent(Event, tag="eval"):
    """Periodic held-out evaluation after optimizer step ``step`` (every ``--eval-every`` steps).

    ``loss`` is the mean next-token cross-entropy in nats/token over the run's fixed held-out set
    (the same windows as the stage events' ``eval_loss``); ``perplexity`` = exp(loss).
    ``tokens`` counts the held-out tokens scored; ``elapsed_ms`` is the eval's wall time."""

    step: int
    stage: str
    loss: float
    perplexity: float
    tokens: int = 0
    elapsed_ms: float = 0.0


class Sample(msgspec.Struct, kw_only=True):
    """Continuations of one fixed prompt: ``greedy`` (argmax) and ``sampled`` (temperature
    ``temperature``, top-k ``top_k``, seeded with ``seed`` so a re-run draws the same text)."""

    prompt: str
    greedy: str
    sampled: str
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0


class SampleEvent(Event, tag="sample"):
    """Generated text for the run's fixed prompts after step ``step`` (at most ``max_new_tokens`` each)."""

    step: int
    stage: str
    samples: list[Sample] = []
    max_new_tokens: int = 0
    elapsed_ms: float = 0.0


class GpuStats(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One of the run's GPUs (NVML).  A field NVML cannot read is None."""

    index: int
    name: str = ""
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class SystemEvent(Event, tag="system"):
    """Resource use of the run's worker, about every 10 s: process CPU % (100 = one core busy),
    resident memory, host memory; ``gpus`` is empty on CPU."""

    step: int
    cpu_percent: float
    rss_bytes: int
    host_memory_used_bytes: int
    host_memory_total_bytes: int
    gpus: list[GpuStats] = []


class AlertEvent(Event, tag="alert"):
    """Something a person should look at.  ``reason``: nonfinite_loss, loss_spike, divergence,
    grad_norm_explosion (from the worker), stall, lost_worker (from the daemon); ``value`` is the
    measurement that tripped it and ``threshold`` the bound it crossed (both None when not a number)."""

    level: AlertLevel
    reason: str
    step: int
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    source: str = "worker"  # worker | daemon


MONITORING_KINDS: tuple[str, ...] = ("eval", "sample", "system", "alert")


class PrepareEvent(Event, tag="prepare"):
    """Corpus preparation before training (issue 13, docs/data.md), at least every few seconds
    while it works.  ``stage``: hashing (corpus digest), checking (pre-tokenized ids),
    tokenizing (into shards), done (this build finished), ready (the token stream is open:
    ``tokens``, ``corpus_digest`` and ``tokenizer_digest`` identify the data the run trains on).
    ``bytes_done``/``bytes_total``: input bytes; ``mb_per_s``: input MB/s of this build;
    ``eta_s``: seconds left (None: unknown); ``replaced``: invalid UTF-8 bytes / lone surrogates
    replaced by U+FFFD, the first at ``replaced_at`` ("FILE: line N")."""

    stage: Literal["hashing", "checking", "tokenizing", "done", "ready"]
    bytes_done: int = 0
    bytes_total: int = 0
    tokens: int = 0
    mb_per_s: float = 0.0
    eta_s: float | None = None
    documents: int = 0
    replaced: int = 0
    replaced_at: str = ""
    corpus_digest: str = ""
    tokenizer_digest: str = ""
    vocab_size: int = 0


AnyEvent = Union[RunEvent, StageEvent, PhaseEvent, StepEvent, CheckpointEvent, UploadEvent,
                 EvalEvent, SampleEvent, SystemEvent, AlertEvent, PrepareEvent]
EVENT_KINDS: tuple[str, ...] = ("run", "stage", "phase", "step", "checkpoint", "upload", *MONITORING_KINDS, "prepare")

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
    "run_tokens",
    "tokens_per_s",
    "mfu",
    "ts",
)


def metrics_record(event: StepEvent) -> dict[str, object]:
    """The ``metrics.jsonl`` line of a step event: a dict of exactly the ``METRICS_FIELDS``, in that order."""
    return {name: getattr(event, name) for name in METRICS_FIELDS}
