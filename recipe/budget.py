"""How much a run trains: sizes with suffixes, per-stage budgets, and the global batch per step.

Pure Python (no torch): ``tritterctl start`` parses and checks the flags with it, the daemon checks
the ``RunConfig`` again (``check_config``), and the trainer resolves each stage's batch and step
count with the same functions, so the three can never disagree.

* Sizes: ``parse_size("1.5B") == 1_500_000_000``; suffixes ``k`` (10^3), ``M`` (10^6), ``B``
  (10^9), case-insensitive, as token counts are quoted in papers (Chinchilla's "1.4T tokens").
* Per-stage lists: ``--steps 100,300`` or ``--tokens 1B,2B,4B``; one value means every stage.
* Global batch (tokens per optimizer step) is reached by gradient accumulation: each of ``world``
  ranks runs ``accum`` micro-batches of ``micro_batch`` sequences of ``seq_len`` tokens, so
  ``tokens_per_step = accum * micro_batch * world * seq_len`` (torchtitan's and litgpt's
  ``global_batch_size = local_batch_size * grad_accum_steps * data_parallel``).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from tritter.protocol.config import MAX_STEPS

if TYPE_CHECKING:
    from tritter.protocol.config import RunConfig

MAX_SIZE = 10**15  # tokens; far beyond any corpus, and well inside msgpack's 64-bit integers
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]i|[kKmMbB]?)\s*$")


class BudgetError(ValueError):
    """A size, list or budget the user gave cannot be used; ``str(error)`` is one line for the user."""


def parse_size(text: str, flag: str = "size") -> int:
    """``"500k"`` -> 500000, ``"0.5M"`` -> 500000, ``"2B"`` -> 2000000000, ``"1Mi"`` -> 1048576.

    Args: ``text`` a non-negative number with an optional suffix k/M/B (powers of 1000) or
    Ki/Mi/Gi (powers of 1024: a "1M-token" global batch in papers is usually 2**20);
    ``flag`` names the option in the error. Returns a positive int.
    Raises BudgetError when it does not parse, is not a whole number (``1.5``; ``1.5k`` is), or is below 1.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise BudgetError(f"{flag} {text!r} is not a size (a number with an optional k, M, B, Ki, Mi or Gi suffix, "
                          "e.g. 500k, 2B, 1Mi)")
    exact = Fraction(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if exact.denominator != 1:
        raise BudgetError(f"{flag} {text!r} is not a whole number")
    value = int(exact)
    if not 1 <= value <= MAX_SIZE:
        raise BudgetError(f"{flag} {text!r} must be between 1 and {MAX_SIZE:.0e}")
    return value


def parse_count(text: str, flag: str = "count") -> int:
    """A plain positive integer (``--steps``): ``"300"`` -> 300 (at most MAX_STEPS). Raises BudgetError otherwise."""
    stripped = text.strip().replace("_", "")
    if not stripped.isdigit() or not 1 <= int(stripped) <= MAX_STEPS:
        raise BudgetError(f"{flag} {text!r} must be a whole number between 1 and {MAX_STEPS:,}")
    return int(stripped)


def parse_list(text: str, flag: str, parse_one: Callable[[str, str], int]) -> list[int]:
    """``"100,300"`` -> ``[100, 300]`` with ``parse_one`` for each item (``parse_count`` or
    ``parse_size``). Raises BudgetError for an empty item or an unparsable one."""
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise BudgetError(f"{flag} {text!r} has an empty item (write e.g. 100,300)")
    return [parse_one(item, flag) for item in items]


def parse_steps(text: str) -> list[int]:
    """``--steps`` value: one count or a comma list of counts (optimizer steps per stage)."""
    return parse_list(text, "--steps", parse_count)


def parse_tokens(text: str) -> list[int]:
    """``--tokens`` value: one size or a comma list of sizes (tokens per stage; k/M/B suffixes)."""
    return parse_list(text, "--tokens", parse_size)


def per_stage(values: Sequence[int], stages: Sequence[str], flag: str, whose: str = "the run has") -> list[int]:
    """One value per stage: a single value applies to every stage; otherwise the list must have
    exactly one value per stage. ``whose`` starts the error's count ("the run has", "the
    extension adds"). Raises BudgetError on a length mismatch."""
    if len(values) == 1:
        return [values[0]] * len(stages)
    if len(values) != len(stages):
        raise BudgetError(
            f"{flag} has {len(values)} values but {whose} {len(stages)} stages ({', '.join(stages)}); "
            "give one value per stage, or one for all"
        )
    return list(values)


@dataclass(frozen=True)
class BatchPlan:
    """The global batch of one stage, as the trainer runs it.

    ``micro_batch`` sequences per forward/backward on each rank, ``accum`` micro-batches per optimizer
    step, ``world`` ranks; ``global_rows = micro_batch * accum * world`` sequences of ``seq_len``
    tokens, ``tokens_per_step = global_rows * seq_len``.
    """

    micro_batch: int
    accum: int
    world: int
    seq_len: int

    @property
    def global_rows(self) -> int:
        """Sequences per optimizer step, all ranks: ``micro_batch * accum * world``."""
        return self.micro_batch * self.accum * self.world

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step (the global batch in tokens): ``global_rows * seq_len``."""
        return self.global_rows * self.seq_len


def resolve_batch(
    seq_len: int,
    preset_batch: int,
    preset_batch_tokens: int | None,
    world: int = 1,
    batch_tokens: int | None = None,
    micro_batch: int | None = None,
) -> BatchPlan:
    """The stage's micro-batch and accumulation steps.

    Args: ``seq_len`` tokens per sequence; ``preset_batch`` the preset's sequences per rank and
    micro-batch (the default ``micro_batch``); ``preset_batch_tokens`` the preset's default global
    batch in tokens (None: one micro-batch per rank, ``preset_batch * world`` sequences, as before
    accumulation existed); ``batch_tokens`` / ``micro_batch`` the user's overrides.
    Returns a BatchPlan with ``accum = max(1, round(rows / (micro_batch * world)))``, i.e. the global
    batch is rounded to the nearest whole number of micro-batches on every rank (the effective
    ``tokens_per_step`` is reported in the ``stage`` event). Raises BudgetError for values below 1.
    """
    micro = micro_batch if micro_batch is not None else preset_batch
    if micro < 1:
        raise BudgetError(f"--micro-batch must be at least 1, got {micro}")
    if world < 1:
        raise BudgetError(f"--nproc must be at least 1, got {world}")
    target = batch_tokens if batch_tokens is not None else preset_batch_tokens
    if target is None:
        return BatchPlan(micro_batch=micro, accum=1, world=world, seq_len=seq_len)
    if target < 1:
        raise BudgetError(f"--batch-tokens must be at least 1, got {target}")
    accum = max(1, round(target / (seq_len * micro * world)))
    return BatchPlan(micro_batch=micro, accum=accum, world=world, seq_len=seq_len)


def stage_steps(index: int, steps: Sequence[int], tokens: Sequence[int] | None, tokens_per_step: int) -> int:
    """Optimizer steps of stage ``index``: ``steps[index]``, or with a token budget
    ``ceil(tokens[index] / tokens_per_step)`` (at least 1). ``steps``/``tokens`` are per-stage lists
    as ``per_stage`` returns them."""
    if tokens is not None:
        return max(1, math.ceil(tokens[index] / tokens_per_step))
    return steps[index]


def config_steps(config: RunConfig) -> list[int]:
    """Per-stage step budgets of a config: ``stage_steps`` when given, else ``steps`` for every stage."""
    stages = config.stages()
    return per_stage(config.stage_steps or [config.steps], stages, "--steps")


def config_tokens(config: RunConfig) -> list[int] | None:
    """Per-stage token budgets of a config, or None when it counts steps."""
    return per_stage(config.tokens, config.stages(), "--tokens") if config.tokens else None


def check_config(config: RunConfig) -> str | None:
    """One line saying why the config's budgets or batch cannot run, or None when they can.
    (The rest of the config is checked by ``protocol.config.validate_config``.)"""
    try:
        steps = config_steps(config)
        if any(s < 1 for s in steps):
            raise BudgetError(f"--steps must be at least 1 per stage, got {','.join(map(str, steps))}")
        tokens = config_tokens(config)
        if tokens is not None and any(t < 1 for t in tokens):
            raise BudgetError("--tokens must be at least 1 per stage")
        if config.batch_tokens is not None and config.batch_tokens < 1:
            raise BudgetError(f"--batch-tokens must be at least 1, got {config.batch_tokens}")
        if config.micro_batch is not None and config.micro_batch < 1:
            raise BudgetError(f"--micro-batch must be at least 1, got {config.micro_batch}")
        if config.lr is not None and not (0.0 < config.lr <= 1.0):  # also refuses nan
            raise BudgetError(f"--lr must be above 0 and at most 1, got {config.lr}")
        if config.keep_checkpoints is not None and config.keep_checkpoints < 1:
            raise BudgetError(f"--keep-checkpoints must be at least 1, got {config.keep_checkpoints}")
    except BudgetError as error:
        return str(error)
    return None


def budget_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` from a ``recipe.budget`` parser (``parse_steps``, ``parse_tokens``,
    ``parse_size``): its BudgetError becomes one usage line."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except BudgetError as error:
            # argparse already starts the line with "argument --flag:"; don't name the flag twice.
            raise argparse.ArgumentTypeError(re.sub(r"^--[\w-]+ ", "", str(error))) from None

    convert.__name__ = "size"
    return convert
