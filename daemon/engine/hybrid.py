"""Hybrid training: predict some optimizer updates instead of computing them.

The trainer runs a phase machine per stage (see docs/hybrid.md)::

    warmup --(LR warmup over)--> full --(predictor fitted)--> predict <--> correct

* **warmup** / **full** / **correct**: ordinary steps (forward, backward, AdamW).  Every true
  update is recorded into the predictor's history.
* **predict**: the forward pass runs (the loss is reported and watched) but there is no backward;
  the parameters move by the *predicted* update.  Every ``predict_run + 1``-th step of the phase
  is a **probe**: a true step (backward + AdamW, ``was_predicted=False``) whose update is compared
  with what the predictor would have applied there; the relative L2 error is the step's
  ``prediction_error``.  A probe error above ``max_error``, or a loss above ``(1 + loss_tolerance)``
  times the running mean, switches to **correct** for ``correct_steps`` true steps, then back.

The predictor (:class:`UpdatePredictor`) keeps the last ``history`` true updates of every
parameter tensor, divided by the LR they were taken with (AdamW's update, weight decay included,
is proportional to the LR, so the cosine schedule drops out), and fits per tensor an
autoregressive model of order ``order`` by least squares over that history::

    u[t] ~= c1 * u[t-1] + c2 * u[t-2]        (scalars c per tensor, fitted on all its elements)

Predicting ``n`` steps past the last true update rolls the recurrence forward, so a predicted
update is a fixed per-tensor linear combination of the last ``order`` true updates times the
current LR.  A linearly accelerating trajectory is extrapolated exactly (c1 = 2, c2 = -1); noisy
AdamW updates get shrunken coefficients (least squares is the best linear predictor in L2).
Fits whose recurrence would grow (companion spectral radius above ``max_radius``) fall back to
an order-1 fit with a clipped coefficient.

Memory: ``history`` extra copies of the parameters (fp32), plus nothing per prediction (updates
are applied tensor by tensor with ``add_``).  Everything that decides the loss curve, the
history tensors and the scalars of the phase machine, goes into the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

TENSOR_PREFIX = "hybrid.history"


@dataclass(frozen=True)
class HybridSettings:
    history: int = 4  # K: true updates kept per tensor (K extra copies of the parameters)
    order: int = 2  # AR order of the per-tensor fit (< history)
    full_steps: int = 10  # true steps after the LR warmup before the first Predict phase
    predict_run: int = 1  # predicted steps in a row in Predict
    true_run: int = 4  # true steps after each predicted run in Predict (the first is the probe)
    correct_steps: int = 4  # true steps in a Correct phase
    max_error: float = 0.6  # probe relative L2 error above which we fall back to Correct
    loss_tolerance: float = 0.10  # a loss above (1 + tol) * running mean falls back to Correct
    loss_decay: float = 0.9  # the running mean is an EMA with this decay, over all steps
    max_radius: float = 1.05  # spectral radius cap of the fitted recurrence
    ridge: float = 1e-3  # ridge on the normal equations, relative to their mean diagonal

    def __post_init__(self) -> None:
        if not 1 <= self.order < self.history:
            raise ValueError(f"order must be in [1, history), got order={self.order}, history={self.history}")
        if min(self.predict_run, self.true_run, self.correct_steps) < 1 or self.full_steps < 0:
            raise ValueError("predict_run, true_run and correct_steps must be >= 1, full_steps >= 0")


DEFAULT_SETTINGS = HybridSettings()


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a.reshape(-1), b.reshape(-1)).double())


def fit_ar(gram: np.ndarray, order: int, ridge: float, max_radius: float) -> list[float]:
    """Least-squares AR(order) coefficients from the Gram matrix of a history (oldest first).

    Rows t = order..L-1 are the equations ``h[t] = sum_i c[i] h[t-1-i]``; ``gram[i, j] = <h_i, h_j>``.
    """
    length = gram.shape[0]
    if length <= order:
        return [0.0] * order
    a = np.zeros((order, order))
    b = np.zeros(order)
    for t in range(order, length):
        for i in range(order):
            b[i] += gram[t, t - 1 - i]
            for j in range(order):
                a[i, j] += gram[t - 1 - i, t - 1 - j]
    scale = float(np.trace(a)) / order
    if not np.isfinite(scale) or scale <= 0.0:
        return [0.0] * order
    a += np.eye(order) * ridge * scale
    coeffs = np.linalg.solve(a, b)
    if order > 1:
        companion = np.zeros((order, order))
        companion[0] = coeffs
        companion[1:, :-1] = np.eye(order - 1)
        radius = float(np.max(np.abs(np.linalg.eigvals(companion))))
    else:
        radius = abs(float(coeffs[0]))
    if radius > max_radius or not np.all(np.isfinite(coeffs)):
        # Fall back to order 1 over the same history, clipped into the stable range.
        num = sum(gram[t, t - 1] for t in range(1, length))
        den = sum(gram[t - 1, t - 1] for t in range(1, length)) * (1.0 + ridge)
        c1 = float(np.clip(num / den, -max_radius, max_radius)) if den > 0 else 0.0
        return [c1] + [0.0] * (order - 1)
    return [float(c) for c in coeffs]


def rollout(coeffs: list[float], steps: int) -> list[float]:
    """Weights w such that the prediction ``steps`` ahead is ``sum_i w[i] * h[-1-i]``."""
    order = len(coeffs)
    # items[k]: the sequence element k back from the newest, as weights over the basis h[-1-i].
    items = [[1.0 if i == k else 0.0 for i in range(order)] for k in range(order)]
    for _ in range(steps):
        nxt = [sum(coeffs[k] * items[k][i] for k in range(order)) for i in range(order)]
        items = [nxt] + items[:-1]
    return items[0]


class UpdatePredictor:
    """Per-tensor AR fit over the last K true (LR-normalised) updates of a model's parameters."""

    def __init__(self, model: nn.Module, settings: HybridSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.names: list[str] = []
        self.params: list[Tensor] = []
        for name, param in model.named_parameters():  # tied weights appear once
            self.names.append(name)
            self.params.append(param)
        self.history: list[list[Tensor]] = []  # oldest first; each a list of per-parameter tensors
        self.grams: list[np.ndarray] = [np.zeros((0, 0)) for _ in self.params]
        self.coeffs: list[list[float]] = [[0.0] * settings.order for _ in self.params]
        self.ahead = 0  # predicted steps applied since the last true update
        self._pending: list[Tensor] | None = None

    # -- recording true updates ------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return len(self.history) >= self.settings.history

    def before_step(self) -> None:
        """Snapshot the parameters before a true optimizer step (reuses the oldest slot)."""
        if len(self.history) >= self.settings.history:
            slot = self.history.pop(0)
            self.grams = [g[1:, 1:] for g in self.grams]
        else:
            slot = [torch.empty_like(p) for p in self.params]
        with torch.no_grad():
            for buf, p in zip(slot, self.params):
                buf.copy_(p)
        self._pending = slot

    @torch.no_grad()
    def after_step(self, lr: float) -> float | None:
        """Record the true update just taken (at ``lr``); return the relative L2 error of the
        prediction for this step when steps had been predicted since the previous true one."""
        slot, self._pending = self._pending, None
        assert slot is not None, "after_step without before_step"
        for buf, p in zip(slot, self.params):
            buf.sub_(p).mul_(-1.0 / lr)  # (theta_after - theta_before) / lr
        error = None
        if self.ahead > 0 and len(self.history) >= self.settings.order:
            error = self._error_of_prediction(slot, self.ahead + 1)
        self.history.append(slot)
        self._extend_grams(slot)
        self.coeffs = [fit_ar(g, self.settings.order, self.settings.ridge, self.settings.max_radius) for g in self.grams]
        self.ahead = 0
        return error

    def _extend_grams(self, slot: list[Tensor]) -> None:
        length = len(self.history)
        for k, buf in enumerate(slot):
            old = self.grams[k]
            gram = np.zeros((length, length))
            gram[: length - 1, : length - 1] = old
            for j in range(length):
                gram[length - 1, j] = gram[j, length - 1] = _dot(buf, self.history[j][k])
            self.grams[k] = gram

    def _error_of_prediction(self, truth: list[Tensor], steps: int) -> float:
        num = den = 0.0
        for k, true_update in enumerate(truth):
            weights = rollout(self.coeffs[k], steps)
            guess = torch.zeros_like(true_update)
            for i, w in enumerate(weights):
                if w:
                    guess.add_(self.history[-1 - i][k], alpha=w)
            guess.sub_(true_update)
            num += _dot(guess, guess)
            den += _dot(true_update, true_update)
        return (num / den) ** 0.5 if den > 0 else 0.0

    # -- predicting ------------------------------------------------------------------------
    @torch.no_grad()
    def apply_predicted(self, lr: float) -> None:
        """Move the parameters by the predicted update for the next step (at ``lr``)."""
        assert self.ready, "predictor has no history yet"
        self.ahead += 1
        for k, p in enumerate(self.params):
            for i, w in enumerate(rollout(self.coeffs[k], self.ahead)):
                if w:
                    p.add_(self.history[-1 - i][k], alpha=lr * w)

    def predict(self, steps: int = 1) -> list[Tensor]:
        """The normalised update predicted ``steps`` past the last true one (for tests/inspection)."""
        out = []
        for k in range(len(self.params)):
            guess = torch.zeros_like(self.params[k])
            for i, w in enumerate(rollout(self.coeffs[k], steps)):
                guess.add_(self.history[-1 - i][k], alpha=w)
            out.append(guess)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        return {
            f"{TENSOR_PREFIX}.{slot}.{name}": buf
            for slot, bufs in enumerate(self.history)
            for name, buf in zip(self.names, bufs)
        }

    def state(self) -> dict[str, Any]:
        return {"slots": len(self.history), "ahead": self.ahead, "coeffs": self.coeffs}

    def load(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.history = []
        self.grams = [np.zeros((0, 0)) for _ in self.params]
        for slot in range(int(state["slots"])):
            bufs = []
            for name, p in zip(self.names, self.params):
                saved = tensors[f"{TENSOR_PREFIX}.{slot}.{name}"]
                bufs.append(saved.to(device=p.device, dtype=p.dtype).clone())
            self.history.append(bufs)
            self._extend_grams(bufs)
        self.coeffs = [[float(c) for c in cs] for cs in state["coeffs"]]
        self.ahead = int(state["ahead"])


@dataclass
class StepPlan:
    phase: str  # warmup | full | predict | correct
    predicted: bool  # True: no backward, apply the predicted update
    reason: str = ""  # why the phase changed (when it did)


class HybridController:
    """The phase machine of one stage plus its predictor; all its state is checkpointed."""

    def __init__(self, model: nn.Module, settings: HybridSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.predictor = UpdatePredictor(model, settings)
        self.mode = "full"  # full | predict | correct (after the LR warmup)
        self.full_done = 0  # true steps since the LR warmup ended, in mode full
        self.correct_left = 0
        self.true_left = 0  # true steps still due in Predict before the next predicted run
        self.loss_mean: float | None = None
        self.last_grad_norm = 0.0
        self.last_error: float | None = None
        self.pending_reason = ""

    def plan(self, stage_step: int, warmup_steps: int) -> StepPlan:
        s = self.settings
        if stage_step < warmup_steps:
            return StepPlan("warmup", False)
        reason, self.pending_reason = self.pending_reason, ""
        if self.mode == "full" and self.predictor.ready and self.full_done >= s.full_steps:
            self.mode, self.true_left = "predict", 0
            reason = f"predictor fitted on the last {s.history} true updates"
        elif self.mode == "correct" and self.correct_left <= 0:
            self.mode, self.true_left = "predict", 0
            reason = f"{s.correct_steps} true steps refreshed the predictor"
        if self.mode == "predict":
            # predict_run predicted steps, then true_run true steps (the first probes), and again.
            predicted = self.true_left <= 0 and self.predictor.ahead < s.predict_run
            return StepPlan("predict", predicted, reason)
        return StepPlan(self.mode, False, reason or ("LR warmup done" if self.mode == "full" else ""))

    def _fall_back(self, reason: str) -> None:
        self.mode = "correct"
        self.correct_left = self.settings.correct_steps
        self.pending_reason = reason

    def watch_loss(self, loss: float, in_predict: bool) -> bool:
        """Update the running mean; in Predict, return True (and fall back) when the loss jumped."""
        mean = self.loss_mean
        tripped = False
        if in_predict and mean is not None and loss > mean * (1.0 + self.settings.loss_tolerance):
            tripped = True
            self._fall_back(f"loss {loss:.3f} > {1.0 + self.settings.loss_tolerance:.2f} x running mean {mean:.3f}")
        d = self.settings.loss_decay
        self.loss_mean = loss if mean is None else d * mean + (1.0 - d) * loss
        return tripped

    def true_step_done(self, plan: StepPlan, error: float | None) -> None:
        if plan.phase == "full":
            self.full_done += 1
        elif plan.phase == "correct":
            self.correct_left -= 1
        elif plan.phase == "predict":
            self.true_left = self.settings.true_run - 1 if error is not None else self.true_left - 1
        self.last_error = error
        if plan.phase == "predict" and error is not None and error > self.settings.max_error:
            self._fall_back(f"prediction error {error:.2f} > {self.settings.max_error:.2f}")

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "mode": self.mode,
            "full_done": self.full_done,
            "correct_left": self.correct_left,
            "true_left": self.true_left,
            "loss_mean": self.loss_mean,
            "last_grad_norm": self.last_grad_norm,
            "last_error": self.last_error,
            "pending_reason": self.pending_reason,
            "predictor": self.predictor.state(),
        }

    def tensors(self) -> dict[str, Tensor]:
        return self.predictor.tensors()

    @classmethod
    def restore(cls, model: nn.Module, state: dict[str, Any], tensors: dict[str, Tensor]) -> HybridController:
        # Checkpoints from before true_run existed ran with one true step per predicted run.
        controller = cls(model, HybridSettings(**{"true_run": 1, **state["settings"]}))
        controller.mode = state["mode"]
        controller.full_done = int(state["full_done"])
        controller.correct_left = int(state["correct_left"])
        controller.true_left = int(state.get("true_left", 0))
        controller.loss_mean = state["loss_mean"]
        controller.last_grad_norm = float(state["last_grad_norm"])
        controller.last_error = state["last_error"]
        controller.pending_reason = state["pending_reason"]
        controller.predictor.load(state["predictor"], tensors)
        return controller
