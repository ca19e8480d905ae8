"""Learning-rate schedule: linear warmup, then cosine decay to a floor (a floor of 1.0 x peak holds it)."""

from __future__ import annotations

import math


def lr_at(step_in_stage: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """LR for the optimizer step with 0-based index ``step_in_stage`` of a ``total``-step stage."""
    warmup = min(warmup, max(total - 1, 0))
    if step_in_stage < warmup:
        return peak * (step_in_stage + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    progress = min((step_in_stage - warmup) / span, 1.0)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
