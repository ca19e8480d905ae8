"""What the trainer reports besides steps: periodic held-out eval, text samples, system stats, alerts.

``RunMonitor.after_step`` runs once after every optimizer step (the trainer calls it right after
the step event leaves) and emits:

- ``eval`` every ``eval_every`` steps: mean held-out loss over the run's fixed held-out set (the
  windows the stage events use) and perplexity = exp(loss);
- ``sample`` every ``sample_every`` steps: for each fixed prompt a greedy continuation and one
  sampled continuation (temperature, top-k, a seed from the run's seed and the step, so a re-run
  draws the same text), at most ``max_new_tokens`` tokens each;
- ``system`` about every ``system_interval_s`` seconds (the first after the first step);
- ``alert`` when ``LossWatch`` flags the step (spike, divergence, grad-norm explosion).

Nothing here touches the training RNG streams, the optimizer or the data position, so exact
resume is unaffected: sampling draws from its own ``torch.Generator``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tritter.daemon.engine.data import load_tokenizer
from tritter.daemon.engine.device import autocast
from tritter.daemon.engine.loss_watch import LossWatch, WatchSettings
from tritter.daemon.engine.sysstats import SystemSampler
from tritter.protocol.events import AlertEvent, AnyEvent, EvalEvent, Sample, SampleEvent, StepEvent

log = logging.getLogger("tritter.monitoring")

# Openings typical of the embedded corpus (six Jane Austen novels): a model that has learned
# anything continues them recognisably.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "It is a truth universally acknowledged, that",
    "Elizabeth looked at her sister and said",
    "\"My dear Mr. Bennet,\" said his lady to him one day,",
)
SAMPLE_EVERY_FACTOR = 4  # default sample cadence: every 4th eval interval
MAX_NEW_TOKENS = 32
TEMPERATURE = 0.8
TOP_K = 50
SYSTEM_INTERVAL_S = 10.0


@dataclass
class MonitorSettings:
    """Cadences (steps; 0 = off; None = the current stage preset's default) and sampling settings."""

    eval_every: int | None
    sample_every: int | None
    prompts: Sequence[str] = DEFAULT_PROMPTS
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = TEMPERATURE
    top_k: int = TOP_K
    system_interval_s: float = SYSTEM_INTERVAL_S
    seed: int = 0
    watch: WatchSettings = field(default_factory=WatchSettings)


class Host(Protocol):
    """What the monitor needs from the trainer (``TrainerHost`` adapts a ``Trainer``).

    ``model``: the current LlamaForCausalLM (unwrapped); ``device``; ``emit(event)``;
    ``heldout()``: the fixed held-out batches [(x, y)], int64 (B, T) each; ``tokenizer``: a
    ``tokenizers.Tokenizer``; ``context``: the longest sequence to feed the model (tokens).
    """

    @property
    def model(self) -> torch.nn.Module:
        """The current model (a LlamaForCausalLM, not DDP-wrapped)."""
        ...

    @property
    def device(self) -> torch.device:
        """The device the model is on."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The run's ``tokenizers.Tokenizer`` (encodes prompts, decodes samples)."""
        ...

    @property
    def context(self) -> int:
        """The longest sequence to feed the model, in tokens."""
        ...

    @property
    def preset_eval_every(self) -> int:
        """The current preset's ``eval_every``, in optimizer steps."""
        ...

    def emit(self, event: AnyEvent) -> None:
        """Send ``event`` to the daemon."""
        ...

    def heldout(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed held-out batches [(x, y)], int64 (B, T) each."""
        ...


class TrainerHost:
    """``Host`` over a ``Trainer`` (read lazily: the model changes at every growth stage)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._heldout: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._tokenizer: Any = None

    @property
    def model(self) -> torch.nn.Module:
        """The trainer's current (unwrapped) model; it changes at every growth stage."""
        return self.trainer.model

    @property
    def device(self) -> torch.device:
        """The device the trainer trains on."""
        return self.trainer.device

    @property
    def context(self) -> int:
        """The current preset's ``seq_len``, in tokens: the longest sequence sampling feeds the model."""
        return int(self.trainer.preset.train.seq_len)

    @property
    def preset_eval_every(self) -> int:
        """The current preset's ``eval_every``, in optimizer steps."""
        return int(self.trainer.preset.train.eval_every)

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer (``--tokenizer``'s when the data carries one, else the embedded one), loaded once."""
        if self._tokenizer is None:
            # The run's own tokenizer when the data carries one (--tokenizer), else the embedded one.
            self._tokenizer = getattr(self.trainer.data, "tokenizer", None) or load_tokenizer()
        return self._tokenizer

    def emit(self, event: AnyEvent) -> None:
        """Send ``event`` through the trainer (which stamps ``run_id`` and ``ts``)."""
        self.trainer.emit(event)

    def heldout(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The run's fixed held-out batches [(x, y)], int64 (B, T) each, built once on first call."""
        if self._heldout is None:  # one fixed set for the whole run: build the windows once
            self._heldout = self.trainer._heldout()
        return self._heldout


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats/token) over ``batches`` and the tokens scored.

    Every batch has the same shape, so the mean of batch means is the token mean.  Leaves the
    model in the training/eval mode it found.  Raises ValueError on an empty ``batches``.
    """
    if not batches:
        raise ValueError("no held-out batches")
    was_training = model.training
    model.eval()
    try:
        with autocast(device):
            losses = [float(model(x.to(device), labels=y.to(device))) for x, y in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses), sum(int(y.numel()) for _, y in batches)


@torch.no_grad()
def continue_prompt(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, context: int,
                    device: torch.device, generator: torch.Generator, temperature: float, top_k: int
                    ) -> tuple[list[int], list[int]]:
    """Greedy and sampled continuations (token ids, ``max_new_tokens`` each) of one prompt.

    Both rows run as one batch of two; each new token re-reads the last ``context`` tokens (no
    KV cache: a few dozen tokens on a small model).  Sampling: softmax(logits / temperature)
    restricted to the ``top_k`` most likely tokens (0 = all), drawn on the CPU from
    ``generator`` so the draw is the same on any device.
    """
    was_training = model.training
    model.eval()
    try:
        rows = torch.tensor([prompt_ids, prompt_ids], dtype=torch.long)
        for _ in range(max_new_tokens):
            window = rows[:, -context:].to(device)
            with autocast(device):
                logits = model(window)[:, -1, :].float().cpu()  # (2, V)
            greedy = logits[0].argmax()
            scaled = logits[1] / max(temperature, 1e-6)
            if 0 < top_k < scaled.numel():
                kth = torch.topk(scaled, top_k).values[-1]
                scaled = scaled.masked_fill(scaled < kth, -math.inf)
            sampled = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)[0]
            rows = torch.cat([rows, torch.stack([greedy, sampled]).view(2, 1)], dim=1)
    finally:
        model.train(was_training)
    start = len(prompt_ids)
    return rows[0, start:].tolist(), rows[1, start:].tolist()


class RunMonitor:
    """Periodic eval, samples, system stats and alerts for one run (rank 0 only)."""

    def __init__(self, host: Host, settings: MonitorSettings, gpu_ids: Sequence[str | int] = ()) -> None:
        self.host = host
        self.settings = settings
        self.watch = LossWatch(settings.watch)
        self.system: SystemSampler | None = None
        self._gpu_ids = gpu_ids
        self._last_system = -math.inf
        self._prompt_ids: list[list[int]] | None = None

    # -- the hook ---------------------------------------------------------------------------
    def after_step(self, event: StepEvent) -> None:
        """Everything due after step ``event.step``; never raises (monitoring must not stop training)."""
        try:
            self._after_step(event)
        except Exception:  # a monitoring bug must not fail the run; the log says what broke
            log.exception("monitoring after step %d failed", event.step)

    def _after_step(self, event: StepEvent) -> None:
        host = self.host
        for alert in self.watch.observe(event.step, event.loss, event.gradient_norm):
            host.emit(alert)
        s = self.settings
        eval_every, sample_every = self.cadence()
        if eval_every and event.step % eval_every == 0:
            host.emit(self.evaluate(event.step, event.stage))
        if sample_every and event.step % sample_every == 0:
            host.emit(self.sample(event.step, event.stage))
        now = time.monotonic()
        if now - self._last_system >= s.system_interval_s:
            self._last_system = now
            if self.system is None:
                self.system = SystemSampler(self._gpu_ids)
            host.emit(self.system.sample(event.step))

    def cadence(self) -> tuple[int, int]:
        """(eval_every, sample_every) in steps for the current stage (0 = off)."""
        s = self.settings
        default = self.host.preset_eval_every
        eval_every = default if s.eval_every is None else s.eval_every
        sample_every = SAMPLE_EVERY_FACTOR * default if s.sample_every is None else s.sample_every
        return eval_every, sample_every

    def nonfinite(self, step: int, message: str, value: float = math.nan) -> None:
        """The trainer met a NaN/inf loss at ``step`` (and is about to fail the run): say so first."""
        try:
            self.host.emit(AlertEvent(level="critical", reason="nonfinite_loss", step=step, value=value,
                                      message=message))
        except Exception:
            log.exception("could not report the non-finite loss")

    # -- the measurements -----------------------------------------------------------------------
    def evaluate(self, step: int, stage: str) -> EvalEvent:
        """Held-out loss of the current model at optimizer ``step`` of ``stage``: an EvalEvent with ``loss``
        (mean nats/token), ``perplexity`` = exp(loss) (inf past loss 700), ``tokens`` evaluated and ``elapsed_ms``.
        """
        host = self.host
        started = time.perf_counter()
        loss, tokens = heldout_loss(host.model, host.heldout(), host.device)
        perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709
        return EvalEvent(step=step, stage=stage, loss=loss, perplexity=perplexity, tokens=tokens,
                         elapsed_ms=(time.perf_counter() - started) * 1000.0)

    def sample(self, step: int, stage: str) -> SampleEvent:
        """Continue each configured prompt by ``max_new_tokens`` tokens, greedy and sampled (temperature,
        top-k; generator seeded from the run's seed and ``step``, so a resume redraws the same text);
        returns a SampleEvent with the decoded texts and ``elapsed_ms``.
        """
        host = self.host
        s = self.settings
        started = time.perf_counter()
        tokenizer = host.tokenizer
        if self._prompt_ids is None:
            self._prompt_ids = [tokenizer.encode(p).ids or [0] for p in s.prompts]
        # One generator per event, seeded from the run's seed and the step: re-training the
        # same step after a resume draws the same continuation.
        generator = torch.Generator().manual_seed((s.seed * 1_000_003 + step) % 2**63)
        context = host.context
        samples = []
        for prompt, ids in zip(s.prompts, self._prompt_ids):
            ids = ids[-(context - 1):] if len(ids) >= context else ids
            greedy, sampled = continue_prompt(host.model, ids, s.max_new_tokens, context, host.device,
                                              generator, s.temperature, s.top_k)
            samples.append(Sample(prompt=prompt, greedy=tokenizer.decode(greedy), sampled=tokenizer.decode(sampled),
                                  seed=s.seed, temperature=s.temperature, top_k=s.top_k))
        return SampleEvent(step=step, stage=stage, samples=samples, max_new_tokens=s.max_new_tokens,
                           elapsed_ms=(time.perf_counter() - started) * 1000.0)

    def close(self) -> None:
        """Stop the system sampler (and NVML), if one runs."""
        if self.system is not None:
            self.system.close()


def settings_for(config: Any) -> MonitorSettings:
    """A run's cadences: ``--eval-every`` / ``--sample-every`` / ``--sample-prompts`` from its
    ``RunConfig``; unset cadences follow each stage preset's ``eval_every`` (samples: ``SAMPLE_EVERY_FACTOR`` times it)."""
    prompts = tuple(getattr(config, "sample_prompts", None) or DEFAULT_PROMPTS)
    return MonitorSettings(eval_every=getattr(config, "eval_every", None), sample_every=getattr(config, "sample_every", None),
                           prompts=prompts, seed=config.seed)


def gpu_ids(device: torch.device, world: int) -> list[str | int]:
    """NVML identifiers of a run's GPUs: UUIDs of local devices 0..world-1 (the ranks on this
    machine), or [] for a CPU run."""
    if device.type != "cuda":
        return []
    ids: list[str | int] = []
    for index in range(min(max(1, world), torch.cuda.device_count())):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is None:  # an old torch: fall back to the index (right unless CUDA_VISIBLE_DEVICES reorders)
            ids.append(index)
            continue
        text = str(uuid)  # torch prints the bare UUID; NVML names it "GPU-<uuid>"
        ids.append(text if text.startswith("GPU-") else f"GPU-{text}")
    return ids


def monitor_for(trainer: Any) -> RunMonitor | None:
    """The monitor of a ``Trainer`` (rank 0 reports; other ranks get None)."""
    if not trainer.ranks.main:
        return None
    settings = settings_for(trainer.config)
    return RunMonitor(TrainerHost(trainer), settings, gpu_ids(trainer.device, trainer.ranks.world))
