"""The monitor's view-model for monitoring events: eval curve, cumulative tokens, latest sample and
system figures per run, plus the smoothing the loss chart offers.

Kept beside ``RunHistory`` (model.py) rather than in it: ``Monitor`` feeds both from the same
events (live) or files (offline: ``eval.jsonl``, ``samples.jsonl``).  Alerts need no extra state:
the run-state fold keeps them (``RunState.alerts``), live and in ``run.json``.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tritter.protocol.events import AnyEvent, EvalEvent, SampleEvent, StepEvent, SystemEvent

SMOOTHING_LEVELS: tuple[float, ...] = (0.0, 0.6, 0.9, 0.99)  # `m` cycles; 0.6 is TensorBoard's default


def debiased_ema(values: list[float] | array, weight: float) -> list[float]:
    """TensorBoard's scalar smoothing: s_t = (w * m_{t-1} + (1 - w) * x_t) / (1 - w^t), m_0 = 0.

    ``weight`` in [0, 1): 0 returns the values unchanged.  The division by 1 - w^t removes the
    bias towards 0 of an EMA started at 0 (Kingma & Ba 2015, Adam's bias correction), so the
    first points are not dragged down.  Non-finite values are passed through and skipped.
    """
    if weight <= 0:
        return list(values)
    out: list[float] = []
    last, count = 0.0, 0
    for x in values:
        if x != x or x in (float("inf"), float("-inf")):
            out.append(x)
            continue
        last = last * weight + (1 - weight) * x
        count += 1
        out.append(last / (1 - weight**count))
    return out


@dataclass
class RunExtras:
    """Per run: the eval curve (step order), cumulative tokens per step, latest sample and system."""

    eval_steps: array = field(default_factory=lambda: array("q"))
    eval_losses: array = field(default_factory=lambda: array("d"))
    step_index: array = field(default_factory=lambda: array("q"))  # steps, for the tokens column
    tokens_total: array = field(default_factory=lambda: array("d"))  # tokens trained up to each step, all stages
    sample: SampleEvent | None = None
    system: SystemEvent | None = None
    _stage: str = ""
    _offset: float = 0.0  # tokens of the stages before the current one
    _last_tokens: float = 0.0
    _offsets: array = field(default_factory=lambda: array("d"))  # per step: tokens of the earlier stages
    _stages: list[str] = field(default_factory=list)  # per step: its stage

    def add(self, event: AnyEvent) -> None:
        """Take one event: a step adds its run-wide token total (stage tokens plus the earlier stages'), an eval
        its loss (nats/token; a replayed step rewinds), a sample or system event replaces the latest; others are ignored.
        """
        if isinstance(event, StepEvent):
            self._add_step(event)
        elif isinstance(event, EvalEvent):
            if self.eval_steps and event.step <= self.eval_steps[-1]:
                keep = bisect.bisect_left(self.eval_steps, event.step)
                del self.eval_steps[keep:], self.eval_losses[keep:]
            self.eval_steps.append(event.step)
            self.eval_losses.append(event.loss)
        elif isinstance(event, SampleEvent):
            if self.sample is None or event.step >= self.sample.step:
                self.sample = event
        elif isinstance(event, SystemEvent):
            self.system = event

    def _add_step(self, event: StepEvent) -> None:
        # StepEvent.tokens counts the current stage only: add the earlier stages' totals.
        if self.step_index and event.step <= self.step_index[-1]:  # a replay after a resume: rewind
            keep = bisect.bisect_left(self.step_index, event.step)
            del self.step_index[keep:], self.tokens_total[keep:], self._offsets[keep:], self._stages[keep:]
            if keep:
                self._stage, self._offset = self._stages[-1], self._offsets[-1]
                self._last_tokens = self.tokens_total[-1] - self._offset
            else:
                self._stage, self._offset, self._last_tokens = "", 0.0, 0.0
        if self._stage and event.stage != self._stage:
            self._offset += self._last_tokens
        self._stage = event.stage
        self._last_tokens = float(event.tokens)
        self.step_index.append(event.step)
        self.tokens_total.append(self._offset + event.tokens)
        self._offsets.append(self._offset)
        self._stages.append(event.stage)


_eval_decoder = msgspec.json.Decoder(EvalEvent)
_sample_decoder = msgspec.json.Decoder(SampleEvent)


def read_offline(run_dir: Path, extras: RunExtras, offsets: dict[str, int]) -> bool:
    """Offline: new whole lines of ``eval.jsonl`` and ``samples.jsonl`` into ``extras``.

    ``offsets`` (file name -> bytes consumed) carries over between calls; returns True when
    anything was read.  Unreadable lines are skipped, a torn last line is left for next time.
    """
    changed = False
    for name, decoder in (("eval.jsonl", _eval_decoder), ("samples.jsonl", _sample_decoder)):
        path = run_dir / name
        try:
            with path.open("rb") as handle:
                handle.seek(offsets.get(name, 0))
                data = handle.read()
        except OSError:
            continue
        end = data.rfind(b"\n") + 1
        if not end:
            continue
        offsets[name] = offsets.get(name, 0) + end
        for line in data[:end].splitlines():
            try:
                extras.add(decoder.decode(line))
                changed = True
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
    return changed
