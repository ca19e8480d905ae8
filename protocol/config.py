"""The configuration of a run, as given to ``tritterctl start`` and stored in ``run.json``."""

from __future__ import annotations

import msgspec

# Smallest first; a run trains every preset from --start to --end in turn.
PRESET_NAMES: tuple[str, ...] = ("tiny", "small", "100m", "500m", "1b")
MAX_NPROC = 1024
MAX_SEED = 2**32 - 1


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    name: str = ""
    start: str = "tiny"
    end: str = "small"
    steps: int = 200  # optimizer steps per stage
    seed: int = 0
    corpus: str | None = None  # absolute path; None = the embedded corpus
    cuda: bool = False
    hybrid: bool = True
    grad_ckpt_every: int | None = None  # None = the preset's default
    nproc: int = 1
    upload: bool = False
    hf_user: str | None = None
    checkpoint_every: int | None = None  # None = the preset's default

    def stages(self) -> list[str]:
        return list(PRESET_NAMES[PRESET_NAMES.index(self.start) : PRESET_NAMES.index(self.end) + 1])

    def total_steps(self) -> int:
        return self.steps * len(self.stages())


def validate_config(config: RunConfig) -> str | None:
    """Return a one-line reason why ``config`` cannot run, or None when it is fine."""
    for flag, preset in (("--start", config.start), ("--end", config.end)):
        if preset not in PRESET_NAMES:
            return f"unknown preset {preset!r} for {flag} (choose from {', '.join(PRESET_NAMES)})"
    if PRESET_NAMES.index(config.start) > PRESET_NAMES.index(config.end):
        return f"--start {config.start} is bigger than --end {config.end}"
    if config.steps < 1:
        return f"--steps must be at least 1, got {config.steps}"
    if not 1 <= config.nproc <= MAX_NPROC:
        return f"--nproc must be between 1 and {MAX_NPROC}, got {config.nproc}"
    if not 0 <= config.seed <= MAX_SEED:
        return f"--seed must be between 0 and {MAX_SEED}, got {config.seed}"
    if config.grad_ckpt_every is not None and config.grad_ckpt_every < 0:
        return f"--grad-ckpt-every must be 0 (off) or more, got {config.grad_ckpt_every}"
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        return f"--checkpoint-every must be at least 1, got {config.checkpoint_every}"
    if config.upload and not config.hf_user:
        return "--upload needs --hf-user USER"
    if len(config.name) > 100 or any(c in config.name for c in "/\\\n\0"):
        return f"--name {config.name!r} is not a usable run name (no slashes, at most 100 characters)"
    return None
