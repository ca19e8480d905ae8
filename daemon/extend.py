"""``tritterctl extend``: the config of a completed run grown into bigger presets.

The run stays the same run: same id, same folder, same event stream; its config gets the new
``end`` and a budget for each new stage, and the daemon resumes it from its last checkpoint
(the previous last stage's final one), so the trainer grows the model into the next preset,
reports the ``stage started`` eval loss (the grown model computes the same function, so it
matches the last ``completed`` one) and trains on with global step numbers.
"""

from __future__ import annotations

import msgspec

from tritter.protocol.config import PRESET_NAMES, RunConfig, validate_config
from tritter.protocol.control import Extend
from tritter.protocol.state import RunState
from tritter.recipe.budget import BudgetError, check_config, config_steps, config_tokens, per_stage


class ExtendRefused(ValueError):
    """The run cannot be extended so; ``str(error)`` is one line for the user."""


def _done_budgets(state: RunState) -> tuple[list[int], list[int]]:
    """Steps and tokens each completed stage actually trained (from the folded stage events),
    falling back to the config's budget where the log has no figure."""
    budget = config_steps(state.config)
    steps, tokens = [], []
    for index, name in enumerate(state.config.stages()):
        done = next((s for s in state.stages if s.index == index and s.status == "completed"), None)
        if done is not None and done.end_step is not None:
            steps.append(max(1, done.end_step - done.start_step))
            tokens.append(max(1, done.tokens))
        else:
            steps.append(budget[index])
            tokens.append(max(1, budget[index]))
    return steps, tokens


def extended_config(state: RunState, request: Extend) -> RunConfig:
    """The run's config with ``end = request.end`` and per-stage budgets for the new stages.

    Completed stages keep the steps/tokens they trained; new stages get ``request.steps`` or
    ``request.tokens`` (one value or one per new stage), else the run's last stage's budget.
    Raises ExtendRefused when the run is not completed, the preset is not bigger than its last
    stage, or the budgets do not fit the new stages.
    """
    config = state.config
    if state.status != "completed":
        hint = f" (resume it first: tritterctl resume {state.run_id})" if state.status in ("failed", "stopped", "paused", "interrupted") else ""
        raise ExtendRefused(f"run {state.run_id} is {state.status}; only a completed run can be extended{hint}")
    if request.end not in PRESET_NAMES:
        raise ExtendRefused(f"unknown preset {request.end!r} for --end (choose from {', '.join(PRESET_NAMES)})")
    if PRESET_NAMES.index(request.end) <= PRESET_NAMES.index(config.end):
        raise ExtendRefused(
            f"--end {request.end} is not bigger than run {state.run_id}'s last stage {config.end} "
            f"(extend to one of: {', '.join(PRESET_NAMES[PRESET_NAMES.index(config.end) + 1:]) or 'nothing, it is the biggest'})"
        )
    if request.steps and request.tokens:
        raise ExtendRefused("give --steps or --tokens, not both")
    new_stages = list(PRESET_NAMES[PRESET_NAMES.index(config.end) + 1 : PRESET_NAMES.index(request.end) + 1])
    done_steps, done_tokens = _done_budgets(state)
    try:
        if request.tokens:
            tokens = done_tokens + per_stage(request.tokens, new_stages, "--tokens", "the extension adds")
            grown = msgspec.structs.replace(config, end=request.end, tokens=tokens, stage_steps=None)
        else:
            old_tokens = config_tokens(config)
            if request.steps:
                new = per_stage(request.steps, new_stages, "--steps", "the extension adds")
            elif old_tokens is not None:  # a token budget run goes on with its last stage's token budget
                grown = msgspec.structs.replace(
                    config, end=request.end, tokens=done_tokens + [old_tokens[-1]] * len(new_stages), stage_steps=None
                )
                return _checked(grown)
            else:
                new = [config_steps(config)[-1]] * len(new_stages)
            grown = msgspec.structs.replace(config, end=request.end, tokens=None, stage_steps=done_steps + new, steps=new[0])
    except BudgetError as error:
        raise ExtendRefused(str(error)) from None
    return _checked(grown)


def _checked(config: RunConfig) -> RunConfig:
    problem = validate_config(config) or check_config(config)
    if problem:
        raise ExtendRefused(problem)
    return config
