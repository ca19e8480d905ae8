"""Time left across growth stages (recipe/eta.py): later, bigger stages are charged their FLOPs
per step relative to the stage training now, not the current pace alone."""

from __future__ import annotations

import pytest

from tritter.protocol.config import RunConfig
from tritter.protocol.state import RunState
from tritter.recipe.eta import eta_seconds
from tritter.recipe.planner import flops_per_token
from tritter.recipe.presets import get_preset


def running(config: RunConfig, stage: str, step: int, step_ms: float) -> RunState:
    return RunState(run_id="r", run_name="", status="running", config=config, total_steps=config.total_steps(),
                    current_stage=stage, current_step=step, step_ms=step_ms)


def per_step(name: str) -> float:
    """Tokens per optimizer step x training FLOPs per token, from the preset's own numbers."""
    preset = get_preset(name)
    tokens = preset.train.batch_tokens or preset.train.batch_size * preset.train.seq_len
    return tokens * flops_per_token(preset.shape, preset.train.seq_len)


def test_later_stages_are_charged_their_flops_per_step() -> None:
    config = RunConfig(start="100m", end="1b", stage_steps=[100, 200, 300], cuda=True)
    state = running(config, "100m", 40, step_ms=2000.0)
    expected = 60 * 2.0 + 200 * 2.0 * per_step("500m") / per_step("100m") + 300 * 2.0 * per_step("1b") / per_step("100m")
    assert eta_seconds(state) == pytest.approx(expected, rel=1e-6)
    assert eta_seconds(state) > 5 * (600 - 40) * 2.0  # the plain estimate was off by more than 5x here
    # In the last stage only its own steps are left, at its own pace.
    assert eta_seconds(running(config, "1b", 550, step_ms=9000.0)) == pytest.approx(50 * 9.0)
    # The daemon's median pace can stand in for step_ms.
    assert eta_seconds(state, seconds_per_step=1.0) == pytest.approx(expected / 2.0, rel=1e-6)


def test_cpu_growth_and_single_stage_runs() -> None:
    one = RunConfig(start="small", end="small", steps=50)
    assert eta_seconds(running(one, "small", 20, step_ms=500.0)) == pytest.approx(30 * 0.5)
    grow = RunConfig(start="tiny", end="small", steps=50)
    eta = eta_seconds(running(grow, "tiny", 20, step_ms=100.0))
    assert eta == pytest.approx(30 * 0.1 + 50 * 0.1 * per_step("small") / per_step("tiny"), rel=1e-6)


def test_unknown_pace_budget_or_status_gives_none() -> None:
    config = RunConfig(start="tiny", end="small", steps=50)
    assert eta_seconds(running(config, "tiny", 0, step_ms=0.0)) is None
    paused = running(config, "tiny", 10, step_ms=100.0)
    paused.status = "paused"
    assert eta_seconds(paused) is None
    by_tokens = RunConfig(start="tiny", end="small", tokens=[10_000])  # steps unknown until sized
    assert eta_seconds(running(by_tokens, "tiny", 5, step_ms=100.0)) is None
