"""Hybrid training: the update predictor, the phase machine, exact resume mid-Predict; the LR schedule
across stages, which this in-process trainer harness also covers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tritter.daemon.engine import trainer as trainer_module
from tritter.daemon.engine.checkpoint import checkpoint_path, list_checkpoints
from tritter.daemon.engine.hybrid import HybridController, HybridSettings, UpdatePredictor, adamw_updates, fit_ar, rollout
from tritter.recipe.presets import ModelShape, Preset, TrainSettings
from tritter.daemon.engine.trainer import Trainer
from tritter.protocol.config import RunConfig
from tritter.protocol.events import PhaseEvent, StepEvent
from tritter.protocol.wire import decode_event, encode

# Micro presets so that a trainer step takes milliseconds; the real ladder is exercised by
# tests/test_daemon.py.  Same vocab (the tokenizer's) and head_dim 64, so growth works.
MICRO = {
    "tiny": Preset(
        "tiny",
        ModelShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128),
        TrainSettings(batch_size=2, seq_len=16, lr=3e-3, warmup_steps=3, eval_every=10, checkpoint_every=1000),
    ),
    "small": Preset(
        "small",
        ModelShape(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256),
        TrainSettings(batch_size=2, seq_len=16, lr=2e-3, warmup_steps=3, eval_every=10, checkpoint_every=1000),
    ),
}
FAST = HybridSettings(
    history=4, order=2, full_steps=2, predict_run=2, true_run=2, correct_steps=3, max_error=10.0, loss_tolerance=10.0
)


@pytest.fixture(autouse=True)
def micro_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "get_preset", lambda name: MICRO[name])
    monkeypatch.setattr(trainer_module, "EVAL_BATCHES", 2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


class StopAt:
    """Controls that send ``stop`` before the step after ``step`` (None: never)."""

    def __init__(self, step: int | None = None) -> None:
        self.step = step
        self.trainer: Trainer | None = None

    def poll(self) -> str | None:
        if self.step is not None and self.trainer is not None and self.trainer.progress.step == self.step:
            return "stop"
        return None

    def wait(self) -> str:
        raise AssertionError("not paused in these tests")


def run_trainer(
    run_dir: Path,
    cache: Path,
    settings: HybridSettings = FAST,
    *,
    steps: int = 30,
    stop_at: int | None = None,
    hybrid: bool = True,
    end: str = "tiny",
) -> tuple[list, Trainer]:
    events: list = []
    controls = StopAt(stop_at)
    config = RunConfig(start="tiny", end=end, steps=steps, seed=3, hybrid=hybrid, checkpoint_every=7)
    trainer = Trainer("test", config, run_dir, events.append, controls, cache, hybrid_settings=settings)
    controls.trainer = trainer
    trainer.run()
    return events, trainer


def steps_of(events: list) -> list[StepEvent]:
    return [e for e in events if isinstance(e, StepEvent)]


def phases_of(events: list) -> list[PhaseEvent]:
    return [e for e in events if isinstance(e, PhaseEvent)]


# --- the predictor -------------------------------------------------------------------------


class Vector(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n))
        self.m = torch.nn.Parameter(torch.zeros(3, n))


def feed(predictor: UpdatePredictor, model: Vector, update: list[torch.Tensor], lr: float) -> float | None:
    with torch.no_grad():
        for p, u in zip(model.parameters(), update):
            p.add_(u, alpha=lr)
    return predictor.record(update)


def rel_error(guess: list[torch.Tensor], truth: list[torch.Tensor]) -> float:
    num = sum(float((g - t).pow(2).sum()) for g, t in zip(guess, truth))
    return (num / sum(float(t.pow(2).sum()) for t in truth)) ** 0.5


def test_fit_recovers_a_linear_trend() -> None:
    # h_t = a + b t satisfies h_t = 2 h_{t-1} - h_{t-2}; the fit must find that, not "copy".
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    hist = [a + b * t for t in range(5)]
    gram = torch.stack(hist).double() @ torch.stack(hist).double().T
    c1, c2 = fit_ar(gram.numpy(), order=2, ridge=0.0, max_radius=1.001)
    assert c1 == pytest.approx(2.0, abs=1e-6) and c2 == pytest.approx(-1.0, abs=1e-6)
    assert rollout([c1, c2], 3) == pytest.approx([4.0, -3.0], abs=1e-5)  # h_{t+3} = 4 h_t - 3 h_{t-1}


def test_predictor_beats_copying_the_last_update() -> None:
    """A linearly accelerating update sequence (plus noise), taken under a changing LR."""
    gen = torch.Generator().manual_seed(1)
    model = Vector(400)
    settings = HybridSettings(history=6, order=2, ridge=1e-4, max_radius=1.2)
    predictor = UpdatePredictor(model, settings)
    bases = [(torch.randn(p.shape, generator=gen), torch.randn(p.shape, generator=gen) * 0.3) for p in model.parameters()]

    def true_update(t: int) -> list[torch.Tensor]:
        return [a + b * t + 0.05 * torch.randn(a.shape, generator=gen) for a, b in bases]

    lrs = [1e-3 * (1 - 0.05 * t) for t in range(10)]
    for t in range(6):
        feed(predictor, model, true_update(t), lrs[t])
    assert predictor.ready
    truth = true_update(6)
    last = [h.float() for h in predictor.updates[-1]]
    predicted = predictor.predict(1)
    assert rel_error(predicted, truth) < 0.5 * rel_error(last, truth)
    assert rel_error(predicted, truth) < 0.1
    # Applying it moves the parameters by lr * prediction, and the next true step reports the
    # error of the two-steps-ahead prediction.
    before = [p.detach().clone() for p in model.parameters()]
    predictor.apply_predicted(lrs[6])
    for p, b, g in zip(model.parameters(), before, predicted):
        torch.testing.assert_close(p.detach() - b, g * lrs[6])
    two_ahead = predictor.predict(2)
    truth7 = true_update(7)
    error = feed(predictor, model, truth7, lrs[7])
    # The history is fp16: the error is the one against the update as stored.
    assert error == pytest.approx(rel_error(two_ahead, [t.half().float() for t in truth7]), rel=1e-4)
    assert predictor.ahead == 0 and predictor.count == 6 and len(predictor.updates) == settings.order


def test_unstable_fit_falls_back_to_a_bounded_order_one() -> None:
    hist = [torch.full((8,), 2.0**t) for t in range(4)]  # doubling: radius 2 > 1
    gram = (torch.stack(hist).double() @ torch.stack(hist).double().T).numpy()
    coeffs = fit_ar(gram, order=2, ridge=1e-3, max_radius=1.0)
    assert abs(coeffs[0]) <= 1.0 and coeffs[1] == 0.0


def test_checkpoint_from_before_true_run_keeps_its_schedule() -> None:
    model = Vector(3)
    state = HybridController(model, torch.optim.AdamW(model.parameters()), FAST).state()
    assert state is not None
    del state["settings"]["true_run"], state["true_left"]  # what an older build wrote
    restored = HybridController.restore(model, torch.optim.AdamW(model.parameters()), state, {})
    assert restored.settings == dataclasses.replace(FAST, true_run=1) and restored.true_left == 0


# --- the phase machine in the trainer ------------------------------------------------------


def test_phases_predicted_steps_and_probes(tmp_path: Path, cache: Path) -> None:
    events, _ = run_trainer(tmp_path, cache, steps=24)
    steps = steps_of(events)
    phases = [(p.phase, p.step) for p in phases_of(events)]
    # warmup (3 steps) -> full (until 4 updates are recorded and 2 full steps done) -> predict.
    assert phases == [("warmup", 1), ("full", 4), ("predict", 6)]
    predict = [s for s in steps if s.phase == "predict"]
    # predict_run = 2 predicted steps, then true_run = 2 true ones: a probe and a plain true step.
    assert [s.was_predicted for s in predict[:8]] == [True, True, False, False] * 2
    probes = [s for prev, s in zip(predict, predict[1:]) if prev.was_predicted and not s.was_predicted]
    assert len(probes) >= 4 and all(s.prediction_error is not None and s.prediction_error > 0 for s in probes)
    assert all(s.prediction_error is None for s in predict if s not in probes)
    assert all(not s.was_predicted for s in steps if s.phase != "predict")


def test_every_event_of_a_hybrid_run_goes_over_the_wire(tmp_path: Path, cache: Path) -> None:
    """The worker sends each event msgpack-encoded: a numpy scalar in a field (a probe's
    prediction error once was one) would fail the run at its first probe."""
    events, _ = run_trainer(tmp_path, cache, steps=24)
    assert any(isinstance(e, StepEvent) and e.prediction_error is not None for e in events)
    for event in events:
        assert decode_event(encode(event)) == event, event


def test_high_error_falls_back_to_correct(tmp_path: Path, cache: Path) -> None:
    events, _ = run_trainer(tmp_path, cache, dataclasses.replace(FAST, max_error=0.0), steps=24)
    phases = phases_of(events)
    assert [p.phase for p in phases[:5]] == ["warmup", "full", "predict", "correct", "predict"]
    fallback = phases[3]
    assert fallback.reason.startswith("prediction error ") and "> 0.00" in fallback.reason
    assert fallback.step == phases[2].step + 3  # two predicted steps, a probe, then Correct
    back = phases[4]
    assert back.step == fallback.step + 3 and "refreshed" in back.reason  # correct_steps = 3
    steps = steps_of(events)
    assert all(not s.was_predicted for s in steps if s.phase == "correct")


def test_loss_jump_falls_back_to_correct(tmp_path: Path, cache: Path) -> None:
    events, _ = run_trainer(tmp_path, cache, dataclasses.replace(FAST, loss_tolerance=-0.5), steps=16)
    phases = phases_of(events)
    assert [p.phase for p in phases[:4]] == ["warmup", "full", "predict", "correct"]
    assert phases[3].reason.startswith("loss ") and "running mean" in phases[3].reason
    assert phases[3].step == phases[2].step + 1  # the first predicted step already trips


def test_no_hybrid_has_no_predicted_steps(tmp_path: Path, cache: Path) -> None:
    events, _ = run_trainer(tmp_path, cache, steps=20, hybrid=False)
    steps = steps_of(events)
    assert len(steps) == 20 and not any(s.was_predicted for s in steps)
    assert all(s.prediction_error is None for s in steps)
    assert [(p.phase, p.step) for p in phases_of(events)] == [("warmup", 1), ("full", 4)]
    with safe_open(str(list_checkpoints(tmp_path)[0]), framework="pt") as f:
        assert not any(k.startswith("extra.") for k in f.keys())


def test_growth_resets_the_predictor(tmp_path: Path, cache: Path) -> None:
    events, trainer = run_trainer(tmp_path, cache, steps=12, end="small")
    phases = [(p.phase, p.stage, p.step) for p in phases_of(events)]
    assert phases == [
        ("warmup", "tiny", 1), ("full", "tiny", 4), ("predict", "tiny", 6),
        ("warmup", "small", 13), ("full", "small", 16), ("predict", "small", 18),
    ]
    assert isinstance(trainer.hybrid, HybridController)
    assert trainer.hybrid.predictor.params[0].shape[1] == 128  # built on the grown model


def test_only_the_last_stage_decays_its_lr(tmp_path: Path, cache: Path) -> None:
    """Warmup-stable-decay across growth: tiny holds its peak after warmup, small warms up and decays."""
    events, _ = run_trainer(tmp_path, cache, steps=12, end="small", hybrid=False)
    lrs = {stage: [s.lr for s in steps_of(events) if s.stage == stage] for stage in ("tiny", "small")}
    tiny, small = MICRO["tiny"].train, MICRO["small"].train
    assert lrs["tiny"][0] < tiny.lr and lrs["tiny"][tiny.warmup_steps:] == [tiny.lr] * (12 - tiny.warmup_steps)
    assert lrs["small"][0] < small.lr and lrs["small"][small.warmup_steps] == small.lr
    decay = lrs["small"][small.warmup_steps:]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.2 * small.lr


# --- exact resume --------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [FAST, dataclasses.replace(FAST, max_error=0.5)], ids=["predict", "fallbacks"])
def test_resume_mid_predict_is_exact(tmp_path: Path, cache: Path, settings: HybridSettings) -> None:
    steps = 30
    reference, _ = run_trainer(tmp_path / "ref", cache, settings, steps=steps)
    ref_steps = steps_of(reference)
    assert sum(s.was_predicted for s in ref_steps) >= 6
    # Stop right after a predicted step that follows another predicted step: the checkpoint is
    # written with the predictor two steps ahead of its last true update.
    stop = next(
        s.step for prev, s in zip(ref_steps, ref_steps[1:]) if prev.was_predicted and s.was_predicted and s.step > 10
    )
    first, stopped = run_trainer(tmp_path / "run", cache, settings, steps=steps, stop_at=stop)
    assert isinstance(stopped.hybrid, HybridController) and stopped.hybrid.predictor.ahead == 2
    # The stop checkpoint holds the lean history: the last `order` updates of every parameter, fp16.
    # (Checked now: once the resumed run has written newer ones, retention may delete it.)
    assert stopped.model is not None
    names = {n for n, _ in stopped.model.named_parameters()}
    with safe_open(str(checkpoint_path(tmp_path / "run", stop)), framework="pt") as f:
        keys = {k for k in f.keys() if k.startswith("extra.hybrid.")}
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F16"}
    assert len(keys) == settings.order * len(names)
    second, _ = run_trainer(tmp_path / "run", cache, settings, steps=steps)
    resumed = steps_of(first) + steps_of(second)
    assert [s.step for s in resumed] == list(range(1, steps + 1))
    for a, b in zip(ref_steps, resumed):
        assert (a.loss, a.was_predicted, a.phase, a.prediction_error) == (b.loss, b.was_predicted, b.phase, b.prediction_error)
    assert [(p.phase, p.step, p.reason) for p in phases_of(reference)] == [
        (p.phase, p.step, p.reason) for p in phases_of(first) + phases_of(second)
    ]


# --- the lean state ------------------------------------------------------------------------


def _adamw_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float, gen: torch.Generator) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = sum((p * torch.randn(p.shape, generator=gen)).sum() ** 2 for p in model.parameters())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_adamw_update_is_rebuilt_from_the_optimizer_state() -> None:
    """The predictor takes no snapshot of the weights: the update AdamW applied (weight decay and
    bias correction included) is rebuilt from its moments and must equal (theta_after - theta_before) / lr."""
    gen = torch.Generator().manual_seed(4)
    model = Vector(300)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=gen)
    decay, plain = [model.m], [model.w]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                                  betas=(0.9, 0.95))
    params = list(model.parameters())  # w before m: not the optimizer's group order
    for step in range(4):
        lr = 1e-3 * (step + 1)
        before = [p.detach().clone() for p in params]
        _adamw_step(model, optimizer, lr, gen)
        rebuilt = list(adamw_updates(optimizer, params))
        for p, b, u in zip(params, before, rebuilt):
            assert u is not None
            truth = (p.detach() - b) / lr
            assert float((u - truth).norm() / truth.norm()) < 1e-4


def test_hybrid_state_is_at_most_4_bytes_per_parameter(tmp_path: Path, cache: Path) -> None:
    """Beyond weights, grads and AdamW: the fp16 history of `order` = 2 updates, in memory and on disk."""
    events, trainer = run_trainer(tmp_path, cache, steps=14)
    assert isinstance(trainer.hybrid, HybridController) and trainer.model is not None
    params = sum(p.numel() for p in trainer.model.parameters())
    in_memory = sum(t.numel() * t.element_size() for t in trainer.hybrid.tensors().values())
    assert in_memory <= 4 * params
    on_disk = 0
    with safe_open(str(checkpoint_path(tmp_path, 7)), framework="pt") as f:
        for key in f.keys():
            if key.startswith("extra."):
                on_disk += f.get_tensor(key).numel() * f.get_tensor(key).element_size()
    assert 0 < on_disk <= 4 * params


def test_true_step_bookkeeping_syncs_once() -> None:
    """O(1) host syncs: recording a true update reads its inner products back with one tolist()."""
    gen = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])  # 12 tensors
    optimizer = torch.optim.AdamW(model.parameters())
    predictor = UpdatePredictor(model, HybridSettings(history=4, order=2))
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__float__", "__bool__")}

    def counting(name: str):  # noqa: ANN202 - a test hook
        def call(tensor: torch.Tensor, *args: object) -> object:
            calls.append(name)
            return originals[name](tensor, *args)
        return call

    for step in range(6):
        _adamw_step(model, optimizer, 1e-3, gen)
        updates = list(adamw_updates(optimizer, predictor.params))
        for name in originals:
            setattr(torch.Tensor, name, counting(name))
        try:
            calls.clear()
            predictor.record(updates)
            recorded = list(calls)
            calls.clear()
            if predictor.ready:
                predictor.apply_predicted(1e-3)
            applied = list(calls)
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
        assert recorded == ["tolist"] and applied == [], (step, recorded, applied)


def test_old_fp32_history_checkpoint_converts() -> None:
    """A checkpoint from before the lean state (K fp32 slots) still resumes: the band is recomputed
    from the slots, the last `order` become the fp16 history, the fitted coefficients are kept."""
    gen = torch.Generator().manual_seed(6)
    model = Vector(64)
    names = [n for n, _ in model.named_parameters()]
    slots = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(4)]
    coeffs = [[0.7, 0.2], [0.5, -0.1]]
    old_state = {
        "settings": dataclasses.asdict(FAST), "mode": "predict", "full_done": 2, "correct_left": 0, "true_left": 0,
        "loss_mean": 5.0, "last_grad_norm": 1.5, "last_error": 0.3, "pending_reason": "",
        "predictor": {"slots": 4, "ahead": 1, "coeffs": coeffs},
    }
    tensors = {f"hybrid.history.{i}.{name}": t for i, slot in enumerate(slots) for name, t in zip(names, slot)}
    restored = HybridController.restore(model, torch.optim.AdamW(model.parameters()), old_state, tensors)
    predictor = restored.predictor
    assert predictor.ready and predictor.ahead == 1 and predictor.coeffs == coeffs
    assert [u.dtype for u in predictor.updates[-1]] == [torch.float16] * 2
    for k in range(2):
        # <h_t, h_{t-1}> of the newest update, from the fp32 slots (to fp16 rounding).
        expected = float(torch.dot(slots[3][k].reshape(-1), slots[2][k].reshape(-1)))
        assert predictor.band[k, 3, 1] == pytest.approx(expected, rel=1e-2, abs=1e-2)
        w = rollout(coeffs[k], 2)
        torch.testing.assert_close(predictor.predict(2)[k], w[0] * slots[3][k] + w[1] * slots[2][k], rtol=1e-2, atol=1e-2)
