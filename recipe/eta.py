"""A run's time left, across its growth stages.

A step of a later stage costs more than one of the stage training now (100m -> 1b: ~10x the
FLOPs per token, and a bigger global batch), so "steps left x the current pace" underestimates
a growth run badly.  The pace measured now is scaled, stage by stage, by the ratio of training
FLOPs per optimizer step (tokens per step x ``flops_per_token``, recipe/planner.py): it assumes
the same utilisation (MFU) in every stage, which bigger models on one GPU usually beat slightly,
so the estimate errs long rather than short.  The pace itself is the caller's: the run state's
``step_ms`` (recent step times measured by the worker on a monotonic clock, so a pause or a
clock set back never inflates it) or the daemon's median step interval.
"""

from __future__ import annotations

from tritter.protocol.state import RunState
from tritter.recipe.budget import config_steps, resolve_batch
from tritter.recipe.planner import flops_per_token, preset_batch_tokens
from tritter.recipe.presets import get_preset


def step_flops(preset_name: str, *, world: int = 1, batch_tokens: int | None = None,
               micro_batch: int | None = None) -> float:
    """Training FLOPs of one optimizer step of ``preset_name``'s stage: tokens per step (the global
    batch as ``resolve_batch`` sizes it) x ``flops_per_token`` (6N + attention; PaLM appendix B).
    Raises ValueError for an unknown preset (BudgetError, a ValueError, for a batch below 1)."""
    preset = get_preset(preset_name)
    seq_len = preset.train.seq_len
    batch = resolve_batch(seq_len, preset.train.batch_size, preset_batch_tokens(preset), world,
                          batch_tokens, micro_batch)
    return float(batch.tokens_per_step * flops_per_token(preset.shape, seq_len))


def eta_seconds(state: RunState, seconds_per_step: float | None = None) -> float | None:
    """Seconds until ``state``'s last step: the current stage's steps left at the current pace,
    plus each later stage's steps at that pace x its FLOPs per step / the current stage's.

    Args:
        state: the run (its config, ``current_stage``, ``current_step``, ``total_steps``).
        seconds_per_step: the current pace in seconds; default ``state.step_ms / 1000``.
    Returns:
        Seconds (>= 0), or None when the run is not training, no step has been timed yet, or its
        step budget is not known (``--tokens`` before the trainer sized the stages).
    """
    pace = seconds_per_step if seconds_per_step is not None else state.step_ms / 1000.0
    if state.status != "running" or pace <= 0 or state.total_steps <= 0:
        return None
    steps_left = max(0, state.total_steps - state.current_step)
    config = state.config
    try:
        stages = config.stages()
        budgets = config_steps(config)
        current = stages.index(state.current_stage)
        costs = [step_flops(name, world=config.nproc, batch_tokens=config.batch_tokens,
                            micro_batch=config.micro_batch) for name in stages]
    except ValueError:  # an unknown stage or preset, a bad batch (BudgetError): the plain estimate
        return steps_left * pace
    if sum(budgets) != state.total_steps:  # a budget this config does not describe (e.g. extended)
        return steps_left * pace
    stage_end = sum(budgets[: current + 1])
    seconds = max(0, stage_end - state.current_step) * pace
    for index in range(current + 1, len(stages)):
        seconds += budgets[index] * pace * costs[index] / costs[current]
    return seconds
