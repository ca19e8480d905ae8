"""recipe/budget.py: sizes with suffixes, per-stage lists, global batch resolution; and the
``tritterctl start`` flags that use them (one clear line, exit 2, before any daemon is asked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tritter.protocol.config import RunConfig
from tritter.recipe.budget import (
    BudgetError,
    check_config,
    config_steps,
    config_tokens,
    parse_size,
    parse_steps,
    parse_tokens,
    per_stage,
    resolve_batch,
    stage_steps,
)
from tritter.recipe.presets import get_preset

CTL = str(Path(sys.executable).parent / "tritterctl")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1024", 1024), ("500k", 500_000), ("500K", 500_000), ("0.5M", 500_000), ("2B", 2_000_000_000), ("1.5b", 1_500_000_000), (" 3 M ", 3_000_000),
     ("1Mi", 2**20), ("512ki", 512 * 1024), ("0.5Mi", 2**19), ("1Gi", 2**30)],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1X", "-5", "1e9", "0", "0.0001k", "1,000", "2T", "1.5", "1.2345k", "1Bi"])
def test_bad_sizes_say_which_flag(text: str) -> None:
    with pytest.raises(BudgetError, match="--tokens"):
        parse_size(text, "--tokens")


def test_lists() -> None:
    assert parse_steps("100,300") == [100, 300]
    assert parse_steps("200") == [200]
    assert parse_tokens("1B,2B,4B") == [10**9, 2 * 10**9, 4 * 10**9]
    for bad in ("100,", ",100", "100,,300", "1.5", "0,3"):
        with pytest.raises(BudgetError, match="--steps"):
            parse_steps(bad)


def test_one_value_means_every_stage_and_lengths_must_match() -> None:
    stages = ["100m", "500m", "1b"]
    assert per_stage([7], stages, "--steps") == [7, 7, 7]
    assert per_stage([1, 2, 3], stages, "--steps") == [1, 2, 3]
    with pytest.raises(BudgetError) as error:
        per_stage([1, 2], stages, "--tokens")
    assert str(error.value) == (
        "--tokens has 2 values but the run has 3 stages (100m, 500m, 1b); give one value per stage, or one for all"
    )


def test_config_budgets() -> None:
    plain = RunConfig(start="tiny", end="small", steps=50)
    assert config_steps(plain) == [50, 50] and config_tokens(plain) is None and plain.total_steps() == 100
    listed = RunConfig(start="tiny", end="small", steps=10, stage_steps=[10, 30])
    assert config_steps(listed) == [10, 30] and listed.total_steps() == 40
    tokens = RunConfig(start="100m", end="1b", tokens=[10**9, 2 * 10**9, 4 * 10**9])
    assert config_tokens(tokens) == [10**9, 2 * 10**9, 4 * 10**9]
    assert check_config(RunConfig(start="tiny", end="small", stage_steps=[1, 2, 3])) == (
        "--steps has 3 values but the run has 2 stages (tiny, small); give one value per stage, or one for all"
    )
    assert check_config(RunConfig(micro_batch=0)) == "--micro-batch must be at least 1, got 0"
    assert check_config(RunConfig(lr=float("nan"))) is not None
    assert check_config(RunConfig(keep_checkpoints=0)) is not None
    assert check_config(tokens) is None


def test_batch_resolution() -> None:
    # tiny/small: no token target, one micro-batch of the preset's batch per process (as before).
    tiny = get_preset("tiny").train
    plan = resolve_batch(tiny.seq_len, tiny.batch_size, tiny.batch_tokens, world=2)
    assert (plan.micro_batch, plan.accum, plan.global_rows, plan.tokens_per_step) == (16, 1, 32, 32 * 128)
    # 1b: 1M tokens per step = 1024 sequences of 1024; micro 8 on 4 ranks -> 32 micro-batches each.
    big = get_preset("1b").train
    plan = resolve_batch(big.seq_len, big.batch_size, big.batch_tokens, world=4)
    assert (plan.micro_batch, plan.accum, plan.tokens_per_step) == (8, 32, 2**20)
    # A target that is not a whole number of micro-batches rounds to the nearest one.
    plan = resolve_batch(1024, 8, None, world=1, batch_tokens=500_000)
    assert plan.accum == 61 and plan.tokens_per_step == 61 * 8 * 1024
    assert resolve_batch(128, 16, None, batch_tokens=16 * 128, micro_batch=4).accum == 4
    assert resolve_batch(128, 16, None, batch_tokens=10, micro_batch=4).accum == 1  # at least one


def test_token_budget_to_steps() -> None:
    assert stage_steps(1, [5, 7], None, 1000) == 7
    assert stage_steps(0, [5], [10_000, 1], 4096) == 3  # ceil(10000 / 4096)
    assert stage_steps(1, [5], [10_000, 1], 4096) == 1  # at least one step


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--end", "small", "--steps", "100,200,300"], "--steps has 3 values but the run has 2 stages"),
        (["--tokens", "1Q"], "is not a size"),
        (["--steps", "5", "--tokens", "5k"], "not allowed with argument --steps"),
        (["--batch-tokens", "0"], "must be between 1"),
        (["--lr", "-1"], "--lr"),
    ],
)
def test_start_refuses_bad_budgets_in_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    # No daemon runs on this home: the flags are refused before anything is asked of one.
    done = subprocess.run([CTL, "--home", str(tmp_path), "start", *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
