"""Alert detectors on the training curve: loss spikes, sustained divergence, grad-norm explosions.

Pure Python over the numbers a step event carries (no torch), so they are cheap after every
optimizer step and testable with hand-made series.  Each detector returns the alerts a step
trips, as ``AlertEvent`` s for the trainer to emit; non-finite losses are caught where the trainer
raises (``RunMonitor.nonfinite``), since such a step never produces a step event.

The moving averages are exponential (EMA, ``ema += alpha * (x - ema)``, seeded with the first
value), the usual way to track a noisy training signal (TensorBoard's and wandb's smoothing are
the same recurrence, debiased).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tritter.protocol.events import AlertEvent


@dataclass(frozen=True)
class WatchSettings:
    """Thresholds of the detectors (docs/monitoring.md).

    ``spike_factor``: a loss above this many times its EMA is a spike (dimensionless, > 1).
    ``ema_alpha``: EMA weight of a new value, in (0, 1].
    ``warmup_steps``: steps observed before any detector may fire (the EMA needs a history).
    ``cooldown_steps``: after a spike or grad-norm alert, the same alert stays quiet this many steps.
    ``divergence_margin``: the loss EMA this fraction above its lowest value counts as diverging.
    ``divergence_patience``: ... for this many consecutive steps raises the divergence alert.
    ``grad_norm_factor``: a gradient norm above this many times its EMA is an explosion.
    """

    spike_factor: float = 1.5
    ema_alpha: float = 0.1
    warmup_steps: int = 10
    cooldown_steps: int = 25
    divergence_margin: float = 0.2
    divergence_patience: int = 10
    grad_norm_factor: float = 10.0


class _Ema:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def update(self, x: float) -> float:
        """Fold ``x`` into the exponential moving average (weight ``alpha``; the first value starts it) and return
        the new average."""
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)
        return self.value


class LossWatch:
    """Feed it every step's loss and gradient norm; it says which alerts the step trips.

    ``observe(step, loss, grad_norm)`` returns a list of ``AlertEvent`` (envelope fields unset):
    ``loss_spike`` (warning) when loss > spike_factor x EMA(loss before this step);
    ``divergence`` (critical, once until the EMA comes back under the bound) when EMA(loss) stays
    above (1 + margin) x its lowest value for ``patience`` steps in a row;
    ``grad_norm_explosion`` (critical) when the norm is not finite or > grad_norm_factor x its EMA.
    A value is judged against the EMA of the values before it, then joins it (so a sustained
    rise moves the EMA, which is what the divergence test watches).
    """

    def __init__(self, settings: WatchSettings | None = None) -> None:
        self.settings = settings or WatchSettings()
        self.loss_ema = _Ema(self.settings.ema_alpha)
        self.norm_ema = _Ema(self.settings.ema_alpha)
        self.seen = 0
        self.lowest_ema = math.inf
        self.rising = 0  # consecutive steps above the divergence bound
        self.diverged = False
        self.quiet_until: dict[str, int] = {}

    def _may_fire(self, reason: str, step: int) -> bool:
        if step < self.quiet_until.get(reason, 0):
            return False
        self.quiet_until[reason] = step + self.settings.cooldown_steps
        return True

    def observe(self, step: int, loss: float, grad_norm: float) -> list[AlertEvent]:
        """Judge optimizer step ``step``'s loss (nats/token) and gradient norm; return the alerts it trips (maybe empty).

        A non-finite loss returns no alert (the trainer raises on it); spike/divergence/ratio alerts wait
        for ``warmup_steps`` observations (a non-finite norm does not), and each reason is silenced for
        ``cooldown_steps`` steps after it fires.  Raises nothing.
        """
        s = self.settings
        alerts: list[AlertEvent] = []
        self.seen += 1
        armed = self.seen > s.warmup_steps
        if not math.isfinite(loss):
            return alerts  # the trainer raises on it and RunMonitor.nonfinite reports it
        before = self.loss_ema.value
        if armed and before is not None and before > 0 and loss > s.spike_factor * before:
            if self._may_fire("loss_spike", step):
                alerts.append(AlertEvent(
                    level="warning", reason="loss_spike", step=step, value=loss, threshold=s.spike_factor * before,
                    message=f"loss {loss:.4g} is {loss / before:.2f}x its moving average {before:.4g}",
                ))
        ema = self.loss_ema.update(loss)
        if armed:
            self._divergence(step, ema, alerts)
        self.lowest_ema = min(self.lowest_ema, ema)
        if not math.isfinite(grad_norm):
            if self._may_fire("grad_norm_explosion", step):
                alerts.append(AlertEvent(level="critical", reason="grad_norm_explosion", step=step, value=grad_norm,
                                         message=f"gradient norm is {grad_norm}"))
            return alerts
        norm_before = self.norm_ema.value
        if armed and norm_before is not None and norm_before > 0 and grad_norm > s.grad_norm_factor * norm_before:
            if self._may_fire("grad_norm_explosion", step):
                alerts.append(AlertEvent(
                    level="critical", reason="grad_norm_explosion", step=step, value=grad_norm,
                    threshold=s.grad_norm_factor * norm_before,
                    message=f"gradient norm {grad_norm:.4g} is {grad_norm / norm_before:.1f}x its moving average {norm_before:.4g}",
                ))
        self.norm_ema.update(grad_norm)
        return alerts

    def _divergence(self, step: int, ema: float, alerts: list[AlertEvent]) -> None:
        s = self.settings
        bound = (1 + s.divergence_margin) * self.lowest_ema
        if ema > bound:
            self.rising += 1
            if self.rising >= s.divergence_patience and not self.diverged:
                self.diverged = True
                alerts.append(AlertEvent(
                    level="critical", reason="divergence", step=step, value=ema, threshold=bound,
                    message=f"loss moving average {ema:.4g} has stayed above {bound:.4g} "
                            f"({1 + s.divergence_margin:.2g}x its lowest, {self.lowest_ema:.4g}) for {self.rising} steps",
                ))
        else:
            self.rising = 0
            self.diverged = False  # recovered: a later divergence is news again
