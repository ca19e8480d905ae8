"""torch.compile on the training path (TRITTER_COMPILE=1 forces it on CPU).

The compiled run goes tiny → small with the hybrid schedule and gradient checkpointing; it must
compile each stage's training graph once (no recompiles from predicted steps, eval or a new
batch), and its loss curve must match eager within 1e-4 relative (aot_eager traces the same
graphs; the arithmetic differs only in fusion order).  A compiler failure falls back to eager.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tritter.daemon.engine import trainer as trainer_module
from tritter.daemon.engine.device import CompiledModule
from tritter.daemon.engine.hybrid import HybridSettings
from tritter.daemon.engine.trainer import Trainer
from tritter.protocol.config import RunConfig
from tritter.protocol.events import StageEvent, StepEvent
from tritter.recipe.presets import ModelShape, Preset, TrainSettings

STEPS = 12
# Micro presets (milliseconds a step) with the real vocabulary and head_dim 64, so growth works.
MICRO = {
    "tiny": Preset("tiny", ModelShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128),
                   TrainSettings(batch_size=2, seq_len=16, lr=3e-3, warmup_steps=3, eval_every=10, checkpoint_every=1000)),
    "small": Preset("small", ModelShape(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256),
                    TrainSettings(batch_size=2, seq_len=16, lr=2e-3, warmup_steps=3, eval_every=10, checkpoint_every=1000)),
}
FAST = HybridSettings(history=4, order=2, full_steps=2, predict_run=2, true_run=2, correct_steps=3, max_error=10.0, loss_tolerance=10.0)


class _NoCommands:
    def poll(self) -> str | None:
        return None

    def wait(self) -> str:
        raise AssertionError("never paused here")


def _run(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, compile_on: bool) -> list:
    monkeypatch.setattr(trainer_module, "get_preset", lambda preset: MICRO[preset])
    monkeypatch.setattr(trainer_module, "EVAL_BATCHES", 2)
    monkeypatch.setenv("TRITTER_COMPILE", "1" if compile_on else "0")
    monkeypatch.setenv("TRITTER_COMPILE_BACKEND", "aot_eager")
    events: list = []
    config = RunConfig(name=name, start="tiny", end="small", steps=STEPS, seed=3, hybrid=True, grad_ckpt_every=1, checkpoint_every=1000)
    Trainer("test", config, tmp_path / name, events.append, _NoCommands(), tmp_path / "cache", hybrid_settings=FAST).run()
    return events


def test_compiled_matches_eager_without_recompiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager = _run(tmp_path, "eager", monkeypatch, compile_on=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = _run(tmp_path, "compiled", monkeypatch, compile_on=True)
    stages = [e for e in compiled if isinstance(e, StageEvent)]
    assert [s.compiled for s in stages] == [True] * 4, [(s.status, s.compiled, s.note) for s in stages]
    steps_e = [e for e in eager if isinstance(e, StepEvent)]
    steps_c = [e for e in compiled if isinstance(e, StepEvent)]
    assert [s.step for s in steps_c] == [s.step for s in steps_e] == list(range(1, 2 * STEPS + 1))
    assert any(s.was_predicted for s in steps_c), "the hybrid schedule never predicted a step"
    for a, b in zip(steps_e, steps_c):
        assert b.loss == pytest.approx(a.loss, rel=1e-4), (a.step, a.loss, b.loss)
    # One graph per stage (tiny, then small after growth); predicted steps and eval run eagerly.
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert sum(counters["recompiles"].values()) == 0 if "recompiles" in counters else True


def test_compiler_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    def broken_backend(gm, example_inputs):
        raise RuntimeError("this backend always fails")

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda module, backend=None: torch._dynamo.optimize(broken_backend)(module))
    module = torch.nn.Linear(4, 2)
    wrapped = CompiledModule(module)
    x = torch.ones(3, 4)
    out = wrapped(x)
    assert torch.equal(out, module(x))
    assert not wrapped.compiled and "this backend always fails" in wrapped.note
    with pytest.raises(RuntimeError):  # the eager module's own errors still surface
        wrapped(torch.ones(3, 5))
