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

The trainer sees one small interface (``before_step`` -> :class:`StepPlan`, ``after_step`` ->
:class:`StepReport`), implemented by :class:`HybridController` and, for ``--no-hybrid``, by
:class:`FullTraining`.

The predictor (:class:`UpdatePredictor`) fits, per parameter tensor, an autoregressive model of
order ``order`` by least squares over the last ``history`` true updates, each divided by the LR
it was taken with (AdamW's update, weight decay included, is proportional to the LR, so the
cosine schedule drops out)::

    u[t] ~= c1 * u[t-1] + c2 * u[t-2]        (scalars c per tensor, fitted on all its elements)

Predicting ``n`` steps past the last true update rolls the recurrence forward, so a predicted
update is a fixed per-tensor linear combination of the last ``order`` true updates times the
current LR.  A linearly accelerating trajectory is extrapolated exactly (c1 = 2, c2 = -1); noisy
AdamW updates get shrunken coefficients (least squares is the best linear predictor in L2).
Fits whose recurrence would grow (companion spectral radius above ``max_radius``) fall back to
an order-1 fit with a clipped coefficient.

Lean state (docs/hybrid.md, "Memory"): the least-squares fit only reads inner products of
updates at most ``order`` steps apart, so the predictor keeps

* the last ``order`` updates as fp16 tensors — 2 bytes x ``order`` = **4 bytes per parameter**
  at the default order 2, in memory and in the checkpoint.  fp16, not bf16: a normalised AdamW
  update ``m_hat / (sqrt(v_hat) + eps) + wd * theta`` is bounded by a few units, well inside
  fp16's range, and fp16 keeps 3 more mantissa bits;
* per tensor, a band of the Gram matrix of the last ``history`` updates (``history x (order+1)``
  floats) — scalars, stored in the checkpoint's JSON.

No snapshot of the weights is taken around a true step: the update AdamW just applied is
rebuilt from its own state (``exp_avg``, ``exp_avg_sq``, ``step``, lr, betas, eps, weight decay;
the formula of ``torch.optim.AdamW``), so nothing beyond the fp16 history is allocated except
one tensor-sized temporary at a time.  The bookkeeping of a true step launches per-tensor
kernels and reads their results back with a single ``tolist()``: one host sync per true step,
none per predicted step (the coefficients live on the host).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from tritter.protocol.events import Phase

TENSOR_PREFIX = "hybrid.update"  # extra.hybrid.update.{i}.{name}: fp16, oldest first
OLD_TENSOR_PREFIX = "hybrid.history"  # before the lean state: K fp32 slots (still read)
HISTORY_DTYPE = torch.float16
FP16_MAX = 65504.0
Mode = Literal["full", "predict", "correct"]  # the phase machine's state after the LR warmup


@dataclass(frozen=True)
class HybridSettings:
    """Settings of the hybrid (predicted-update) phase machine and its per-tensor AR fit; steps are
    optimizer steps, errors relative L2.  Raises ValueError unless 1 <= order < history, the runs >= 1, full_steps >= 0.
    """

    history: int = 4  # K: true updates the per-tensor fit covers (as Gram scalars; only `order` kept as tensors)
    order: int = 2  # AR order of the per-tensor fit (< history); `order` fp16 copies = 2*order bytes/parameter
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


def fit_ar(gram: np.ndarray, order: int, ridge: float, max_radius: float) -> list[float]:
    """Least-squares AR(order) coefficients from the Gram matrix of a history (oldest first).

    Args: ``gram`` (L, L) with ``gram[i, j] = <h_i, h_j>``; only entries with ``|i - j| <= order``
    are read, so a banded matrix is enough. Returns ``order`` floats ``c`` for the equations
    ``h[t] = sum_i c[i] h[t-1-i]`` (t = order..L-1), ridge-regularised by ``ridge`` x mean diagonal;
    zeros when the history is too short.
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


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> over all elements, accumulated in fp32, as a 0-dim device tensor (no host sync)."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


@torch.no_grad()
def adamw_updates(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> Iterator[Tensor | None]:
    """The update the last ``optimizer.step()`` applied to each parameter, divided by its LR.

    Rebuilt from AdamW's state instead of a snapshot of the weights (torch.optim.AdamW, Loshchilov &
    Hutter 2019): with ``a = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)`` the step was
    ``theta = theta_prev * (1 - lr * wd) - lr * a``, so ``theta_prev = (theta + lr * a) / (1 - lr * wd)``
    and the normalised update is ``(theta - theta_prev) / lr = -(a + wd * theta_prev)``.
    Yields, lazily and in the order of ``params``, a new fp32 tensor of each parameter's shape (or
    None for a parameter AdamW has not stepped or does not hold), so only one tensor-sized
    temporary is alive at a time. Launches kernels only: the step count stays a 0-dim tensor, no
    host sync. Raises ValueError for amsgrad or maximize (other update rules).
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for p in params:
        group = groups.get(id(p))
        if group is not None and (group.get("amsgrad") or group.get("maximize")):
            raise ValueError("the hybrid predictor rebuilds plain AdamW updates (no amsgrad, no maximize)")
        state = optimizer.state.get(p) if group is not None else None
        if group is None or not state or "exp_avg" not in state:
            yield None
            continue
        # The step count is a 0-dim tensor (on the device with fused AdamW); a 0-dim CPU tensor
        # is a scalar operand to device kernels, so neither case reads it back to the host.
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = group["betas"]
        step = state["step"]
        bc1 = 1.0 - torch.pow(beta1, step)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step))
        a = torch.div(state["exp_avg_sq"].sqrt(), bc2_sqrt).add_(eps)
        a = torch.div(state["exp_avg"], a).div_(bc1)
        prev = (p.detach() + lr * a).div_(1.0 - lr * wd)
        yield a.add_(prev, alpha=wd).neg_()


class UpdatePredictor:
    """Per-tensor AR fit over the last K true (LR-normalised) updates of a model's parameters.

    Tensors held: ``order`` fp16 copies of the parameters (the newest updates). Scalars held: per
    tensor, ``band[k]`` (K, order + 1) with ``band[k][t, l] = <h_t, h_{t-l}>`` for the window's
    updates t (oldest first), and the fitted ``coeffs``.
    """

    def __init__(self, model: nn.Module, settings: HybridSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.names: list[str] = []
        self.params: list[Tensor] = []
        for name, param in model.named_parameters():  # tied weights appear once
            self.names.append(name)
            self.params.append(param)
        self.updates: list[list[Tensor]] = []  # the last `order` updates, oldest first, fp16
        self.count = 0  # true updates in the fit window (<= history)
        self.band = np.zeros((len(self.params), settings.history, settings.order + 1))
        self.coeffs: list[list[float]] = [[0.0] * settings.order for _ in self.params]
        self.ahead = 0  # predicted steps applied since the last true update

    @property
    def ready(self) -> bool:
        """Whether ``history`` true updates have been recorded since the fit window (re)started, so a prediction
        may be made."""
        return self.count >= self.settings.history

    # -- recording true updates ------------------------------------------------------------
    @torch.no_grad()
    def record(self, updates: Iterable[Tensor | None]) -> float | None:
        """Record one true step's normalised updates (one per parameter in ``params`` order, None =
        no update; consumed one at a time, so a generator keeps one temporary alive).

        Returns the relative L2 error ``||predicted - true|| / ||true||`` of the update the
        predictor would have applied ``ahead + 1`` steps past the previous true one, when steps
        were predicted since then; else None. One host sync (a single ``tolist``).
        """
        order = self.settings.order
        full = len(self.updates) >= order
        dots: list[Tensor] = []
        new_slot: list[Tensor] = []
        for k, (p, update) in enumerate(zip(self.params, updates)):
            if update is None:
                update = torch.zeros_like(p)
            new = update.clamp(-FP16_MAX, FP16_MAX).to(HISTORY_DTYPE)
            dots.append(_dot(new, new))
            for lag in range(1, order + 1):
                dots.append(_dot(new, self.updates[-lag][k]) if lag <= len(self.updates) else new.new_zeros((), dtype=torch.float32))
            if full:  # reuse the oldest slot's memory: its inner products are taken already
                new_slot.append(self.updates[0][k].copy_(new))
            else:
                new_slot.append(new)
        values = np.asarray(torch.stack(dots).tolist(), dtype=np.float64).reshape(len(self.params), order + 1)
        error = self._error_of_prediction(values) if self.ahead > 0 and len(self.updates) >= order else None
        if full:
            self.updates.pop(0)
        self.updates.append(new_slot)
        self._append_band(values)
        self.coeffs = [fit_ar(self._gram(k), order, self.settings.ridge, self.settings.max_radius) for k in range(len(self.params))]
        self.ahead = 0
        return error

    def _append_band(self, values: np.ndarray) -> None:
        history = self.settings.history
        if self.count >= history:
            self.band[:, :-1] = self.band[:, 1:]
        else:
            self.count += 1
        self.band[:, self.count - 1] = values

    def _gram(self, k: int) -> np.ndarray:
        """The banded Gram matrix (count, count) of tensor ``k``'s window (|i - j| <= order)."""
        n = self.count
        gram = np.zeros((n, n))
        for t in range(n):
            for lag in range(min(self.settings.order, t) + 1):
                gram[t, t - lag] = gram[t - lag, t] = self.band[k, t, lag]
        return gram

    def _error_of_prediction(self, values: np.ndarray) -> float:
        """From inner products only: ||g - u||^2 = sum_ij w_i w_j <h_i, h_j> - 2 sum_i w_i <h_i, u> + <u, u>,
        with g = sum_i w_i h[-1-i] the rolled-out prediction and u the new update."""
        num = den = 0.0
        n = self.count
        for k in range(len(self.params)):
            w = rollout(self.coeffs[k], self.ahead + 1)
            guess_sq = 0.0
            for i, wi in enumerate(w):
                for j, wj in enumerate(w):
                    lo, hi = max(i, j), min(i, j)  # h[-1-lo] is older; lag lo - hi
                    guess_sq += wi * wj * self.band[k, n - 1 - hi, lo - hi]
            cross = sum(wi * values[k, i + 1] for i, wi in enumerate(w))
            num += max(guess_sq - 2.0 * cross + values[k, 0], 0.0)
            den += values[k, 0]
        return float((num / den) ** 0.5) if den > 0 else 0.0  # a Python float: it goes into events

    # -- predicting ------------------------------------------------------------------------
    @torch.no_grad()
    def apply_predicted(self, lr: float) -> None:
        """Move the parameters by the predicted update for the next step (at ``lr``); no host sync."""
        assert self.ready, "predictor has no history yet"
        self.ahead += 1
        for k, p in enumerate(self.params):
            for i, w in enumerate(rollout(self.coeffs[k], self.ahead)):
                if w:
                    p.add_(self.updates[-1 - i][k], alpha=lr * w)

    def predict(self, steps: int = 1) -> list[Tensor]:
        """The normalised update predicted ``steps`` past the last true one (fp32; tests/inspection)."""
        out = []
        for k in range(len(self.params)):
            guess = torch.zeros_like(self.params[k])
            for i, w in enumerate(rollout(self.coeffs[k], steps)):
                guess.add_(self.updates[-1 - i][k], alpha=w)
            out.append(guess)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The fp16 updates, ``hybrid.update.{i}.{name}`` (i = 0 oldest)."""
        return {
            f"{TENSOR_PREFIX}.{slot}.{name}": buf
            for slot, bufs in enumerate(self.updates)
            for name, buf in zip(self.names, bufs)
        }

    def state(self) -> dict[str, Any]:
        """JSON-able scalars: window length, Gram band, coefficients, steps ahead."""
        return {
            "format": 2,
            "updates": len(self.updates),
            "count": self.count,
            "band": self.band[:, : self.count].tolist(),
            "ahead": self.ahead,
            "coeffs": self.coeffs,
        }

    def load(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Restore from ``state()``/``tensors()``, or convert an older checkpoint's K fp32 slots
        (format 1: ``hybrid.history.{slot}.{name}``) by recomputing the band from them."""
        if state.get("format") != 2:
            self._load_old(state, tensors)
            return
        self.updates = [
            [tensors[f"{TENSOR_PREFIX}.{slot}.{name}"].to(device=p.device, dtype=HISTORY_DTYPE).clone() for name, p in zip(self.names, self.params)]
            for slot in range(int(state["updates"]))
        ]
        self.count = int(state["count"])
        if self.count:
            self.band[:, : self.count] = np.asarray(state["band"], dtype=np.float64)
        self.coeffs = [[float(c) for c in cs] for cs in state["coeffs"]]
        self.ahead = int(state["ahead"])

    def _load_old(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        coeffs, ahead = state["coeffs"], int(state["ahead"])
        for slot in range(int(state["slots"])):
            self.record([tensors[f"{OLD_TENSOR_PREFIX}.{slot}.{name}"].to(p.device) for name, p in zip(self.names, self.params)])
        self.coeffs = [[float(c) for c in cs] for cs in coeffs]  # the fit the old run was using
        self.ahead = ahead


@dataclass(frozen=True)
class StepPlan:
    """What the next optimizer step does: its phase, and whether it skips the backward."""

    phase: Phase
    predicted: bool  # True: forward only, then the predicted update
    reason: str = ""  # why the phase changed (when it did)


@dataclass(frozen=True)
class StepReport:
    """What a finished step reports: its gradient norm (the last measured one for a predicted
    step) and, for the first true step after predicted ones, the prediction's relative L2 error."""

    gradient_norm: float
    prediction_error: float | None


class StepController(Protocol):
    """The trainer's view of how steps are taken (hybrid or not)."""

    def before_step(self, stage_step: int, warmup_steps: int) -> StepPlan:
        """The plan of the stage's 0-based optimizer step ``stage_step`` (warmup while < ``warmup_steps``)."""
        ...

    def after_step(self, plan: StepPlan, loss: float, lr: float, gradient_norm: float | None) -> StepReport:
        """Finish a step of ``plan``: its global loss (nats/token), LR, and gradient norm (None = predicted step)."""
        ...

    def state(self) -> dict[str, Any] | None:
        """JSON-able state for the checkpoint's metadata, or None when there is none."""
        ...

    def tensors(self) -> dict[str, Tensor]:
        """Tensors for the checkpoint's ``extra`` section (name → tensor; empty when none)."""
        ...


class FullTraining:
    """``--no-hybrid``: every step is a true step (warmup, then full); nothing to checkpoint."""

    def before_step(self, stage_step: int, warmup_steps: int) -> StepPlan:
        """Warmup for the stage's first ``warmup_steps`` steps, then full."""
        return StepPlan("warmup" if stage_step < warmup_steps else "full", False)

    def after_step(self, plan: StepPlan, loss: float, lr: float, gradient_norm: float | None) -> StepReport:
        """Pass the measured gradient norm through; no prediction."""
        return StepReport(gradient_norm or 0.0, None)

    def state(self) -> dict[str, Any] | None:
        """None: plain training has no state to checkpoint."""
        return None

    def tensors(self) -> dict[str, Tensor]:
        """An empty dict: plain training has no tensors to checkpoint."""
        return {}


class HybridController:
    """The phase machine of one stage plus its predictor; all its state is checkpointed.

    ``optimizer`` must be the stage's AdamW over ``model``'s parameters: true updates are read
    back from its state after each ``optimizer.step()`` (:func:`adamw_updates`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: HybridSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.optimizer = optimizer
        self.predictor = UpdatePredictor(model, settings)
        self.mode: Mode = "full"
        self.full_done = 0  # true steps since the LR warmup ended, in mode full
        self.correct_left = 0
        self.true_left = 0  # true steps still due in Predict before the next predicted run
        self.loss_mean: float | None = None
        self.last_grad_norm = 0.0
        self.last_error: float | None = None
        self.pending_reason = ""

    # -- the step interface ----------------------------------------------------------------
    def before_step(self, stage_step: int, warmup_steps: int) -> StepPlan:
        """The plan of the stage's 0-based step ``stage_step`` (advances the phase machine)."""
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

    def after_step(self, plan: StepPlan, loss: float, lr: float, gradient_norm: float | None) -> StepReport:
        """Finish a step of ``plan`` whose (finite, global) loss was ``loss`` at ``lr``.

        A predicted step (``gradient_norm`` None) now applies the predicted update, unless its loss
        jumped (then it is withheld and the machine falls back to Correct). A true step (after
        ``optimizer.step()``) records its update and advances the machine.
        """
        if plan.predicted:
            if not self._watch_loss(loss, in_predict=True):
                self.predictor.apply_predicted(lr)
            return StepReport(self.last_grad_norm, None)
        error = self.predictor.record(adamw_updates(self.optimizer, self.predictor.params))
        self.last_grad_norm = gradient_norm or 0.0
        self._watch_loss(loss, in_predict=plan.phase == "predict")
        self._true_step_done(plan, error)
        return StepReport(self.last_grad_norm, error)

    # -- the machine -----------------------------------------------------------------------
    def _fall_back(self, reason: str) -> None:
        self.mode = "correct"
        self.correct_left = self.settings.correct_steps
        self.pending_reason = reason

    def _watch_loss(self, loss: float, in_predict: bool) -> bool:
        """Update the running mean; in Predict, return True (and fall back) when the loss jumped."""
        mean = self.loss_mean
        tripped = False
        if in_predict and mean is not None and loss > mean * (1.0 + self.settings.loss_tolerance):
            tripped = True
            self._fall_back(f"loss {loss:.3f} > {1.0 + self.settings.loss_tolerance:.2f} x running mean {mean:.3f}")
        d = self.settings.loss_decay
        self.loss_mean = loss if mean is None else d * mean + (1.0 - d) * loss
        return tripped

    def _true_step_done(self, plan: StepPlan, error: float | None) -> None:
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
    def state(self) -> dict[str, Any] | None:
        """The machine's scalars and the predictor's (JSON-able), for the checkpoint's metadata."""
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
        """The predictor's fp16 update history, for the checkpoint's ``extra`` tensors."""
        return self.predictor.tensors()

    @classmethod
    def restore(
        cls, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], tensors: dict[str, Tensor]
    ) -> HybridController:
        """Rebuild from ``state()`` and ``tensors()``; older checkpoints (fp32 history, no true_run) convert."""
        # Checkpoints from before true_run existed ran with one true step per predicted run.
        controller = cls(model, optimizer, HybridSettings(**{"true_run": 1, **state["settings"]}))
        mode = state["mode"]
        if mode not in ("full", "predict", "correct"):
            raise ValueError(f"unknown hybrid mode {mode!r} in the checkpoint")
        controller.mode = mode
        controller.full_done = int(state["full_done"])
        controller.correct_left = int(state["correct_left"])
        controller.true_left = int(state.get("true_left", 0))
        controller.loss_mean = state["loss_mean"]
        controller.last_grad_norm = float(state["last_grad_norm"])
        controller.last_error = state["last_error"]
        controller.pending_reason = state["pending_reason"]
        controller.predictor.load(state["predictor"], tensors)
        return controller
