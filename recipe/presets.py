"""Model shapes and training settings for the progressive-growth ladder.

The ladder is tiny -> small -> 100m -> 500m -> 1b. Every preset uses head_dim 64,
so growing a model never changes the rotary embedding (only adds heads), and the
same 8192-token vocabulary with tied input/output embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tritter.protocol.config import PRESET_NAMES  # one definition: the protocol validates preset names


@dataclass(frozen=True)
class ModelShape:
    """Architecture of a Llama-style decoder (no GQA: kv heads == heads)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = 8192
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head: ``hidden_size // num_heads`` (exact; checked at construction)."""
        return self.hidden_size // self.num_heads


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Optimiser / schedule / cadence for one stage (steps count optimiser updates)."""

    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    eval_every: int
    checkpoint_every: int
    grad_ckpt_every: int = 0  # checkpoint every N-th block, 0 = off
    # Global batch per optimizer step in tokens, reached by gradient accumulation of batch_size-sequence
    # micro-batches (recipe/budget.py); None = one micro-batch per process (tiny/small; docs/presets.md).
    batch_tokens: int | None = None
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass(frozen=True)
class Preset:
    """A named model size: its architecture (``shape``) and its stage's training settings (``train``)."""

    name: str
    shape: ModelShape
    train: TrainSettings


# tiny/small are sized to run well under a second per step on 2 CPU cores;
# 100m+ assume one 80 GB GPU (see docs/presets.md for the memory estimate).
_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        ModelShape(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=352),
        # eval_every: periodic held-out eval (8192 tokens, forward only) costs ~1.3 steps here: every 50 ~ 3%.
        TrainSettings(batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20, eval_every=50, checkpoint_every=25),
    ),
    "small": Preset(
        "small",
        ModelShape(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=704),
        # batch 8, not 16: at 16 a step takes ~0.85 s on 2 CPU cores (lm_head + 4 blocks), at 8 ~0.5 s.
        # eval_every 100: at batch 8 one eval costs ~2.7 steps (bench/monitoring.py, docs/benchmarks.md).
        TrainSettings(batch_size=8, seq_len=128, lr=2e-3, warmup_steps=20, eval_every=100, checkpoint_every=25),
    ),
    "100m": Preset(
        "100m",
        ModelShape(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2304),
        TrainSettings(
            batch_size=32, seq_len=1024, lr=6e-4, warmup_steps=200, eval_every=100, checkpoint_every=200,
            batch_tokens=524_288,  # 0.5M tokens: nanoGPT's GPT-2 124M
        ),
    ),
    "500m": Preset(
        "500m",
        ModelShape(hidden_size=1536, num_layers=16, num_heads=24, intermediate_size=4608),
        TrainSettings(
            batch_size=16,
            seq_len=1024,
            lr=3e-4,
            warmup_steps=300,
            eval_every=100,
            checkpoint_every=200,
            grad_ckpt_every=4,
            batch_tokens=1_048_576,  # 1M tokens (GPT-3 paper: 0.5M-1M at 350M-1.3B)
        ),
    ),
    "1b": Preset(
        "1b",
        ModelShape(hidden_size=2048, num_layers=20, num_heads=32, intermediate_size=5632),
        TrainSettings(
            batch_size=8,
            seq_len=1024,
            lr=2e-4,
            warmup_steps=400,
            eval_every=100,
            checkpoint_every=200,
            grad_ckpt_every=4,
            batch_tokens=1_048_576,  # 1M tokens (GPT-3 paper: 0.5M-1M at 350M-1.3B)
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one of ``PRESET_NAMES``); ValueError (one line, listing the names) for any other."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESET_NAMES)})") from None


def with_vocab(preset: Preset, vocab_size: int) -> Preset:
    """``preset`` with its model's vocabulary set to ``vocab_size`` (a run's tokenizer ids rounded
    up to a multiple of 64, formats.tokenizer.model_vocab_size); the same object when unchanged."""
    if vocab_size == preset.shape.vocab_size:
        return preset
    return replace(preset, shape=replace(preset.shape, vocab_size=vocab_size))


def stage_names(start: str, end: str) -> list[str]:
    """Presets from ``start`` to ``end`` inclusive, in growth order."""
    get_preset(start), get_preset(end)  # validate both names first
    i, j = PRESET_NAMES.index(start), PRESET_NAMES.index(end)
    if i > j:
        raise ValueError(f"start preset {start!r} is bigger than end preset {end!r}")
    return list(PRESET_NAMES[i : j + 1])
