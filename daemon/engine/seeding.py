"""Seeds derived from a run's ``--seed``: one definition for the trainer and the benches.

Weight init and growth draw from their own generator, seeded per stage, so that resuming never
depends on how much of the global RNG stream an interrupted run had used, and a bench that
builds "stage 0 of seed 3" gets exactly the weights the trainer would.
"""

from __future__ import annotations

import torch

STAGES_PER_SEED = 1000  # room for this many stages before two seeds' stage seeds could collide


def stage_seed(seed: int, stage_index: int) -> int:
    """The init/growth seed of stage ``stage_index`` (0-based) of a run with ``--seed seed``."""
    return seed * STAGES_PER_SEED + stage_index


def stage_generator(seed: int, stage_index: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``stage_seed(seed, stage_index)``.

    Stage 0 draws the initial weights from it; stage k >= 1 draws the growth noise that
    widens or deepens stage k-1's model.
    """
    return torch.Generator().manual_seed(stage_seed(seed, stage_index))
