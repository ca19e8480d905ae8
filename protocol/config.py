"""The configuration of a run, as given to ``tritterctl start`` and stored in ``run.json``."""

from __future__ import annotations

import msgspec

# Smallest first; a run trains every preset from --start to --end in turn.
PRESET_NAMES: tuple[str, ...] = ("tiny", "small", "100m", "500m", "1b")
MAX_NPROC = 1024
MAX_SEED = 2**32 - 1
MAX_PRIORITY = 10**6
MAX_STEPS = 10**9  # optimizer steps per stage (and --checkpoint-every, --eval-every, ...)
MAX_GRAD_CKPT_EVERY = 10**4  # blocks: far above any preset's depth
MAX_NUMBER = 2**53  # any other number in a config: past this a JSON reader loses exactness
MAX_SAMPLE_PROMPTS = 8
MAX_PROMPT_CHARS = 500


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The configuration of one run: what ``tritterctl start`` sends and ``run.json`` stores.

    Steps are optimizer steps per stage, token counts are training tokens, paths are absolute on the
    daemon's machine; a field left None takes the preset's default.  Decoding tolerates unknown
    fields (newer clients); ``validate_config`` and ``recipe.budget.check_config`` check the values.
    """

    name: str = ""
    start: str = "tiny"
    end: str = "small"
    steps: int = 200  # optimizer steps per stage
    seed: int = 0
    corpus: str | None = None  # absolute path; None = the embedded corpus
    tokenizer: str | None = None  # --tokenizer: absolute path (tokenizer.json or HF folder); None = embedded
    text_field: str = "text"  # --text-field: the JSONL field / Parquet column holding the text
    cuda: bool = False
    hybrid: bool = True
    grad_ckpt_every: int | None = None  # None = the preset's default
    nproc: int = 1
    upload: bool = False
    hf_user: str | None = None
    checkpoint_every: int | None = None  # None = the preset's default
    # Monitoring (docs/monitoring.md): periodic held-out eval and samples; None = the preset's default.
    eval_every: int | None = None  # optimizer steps between eval events (0 = off)
    sample_every: int | None = None  # steps between sample events (0 = off; default 4 x eval_every)
    sample_prompts: list[str] | None = None  # None = the built-in prompts (suited to the embedded corpus)
    deterministic: bool | None = None  # None = on for CPU runs, off for --cuda (docs/presets.md)
    compile: bool | None = None  # torch.compile the training model; None = on for --cuda, off on CPU
    # Scale (recipe/budget.py resolves these; None = the preset's default):
    stage_steps: list[int] | None = None  # --steps 100,300: per-stage steps (overrides steps)
    tokens: list[int] | None = None  # --tokens 1B,2B: per-stage token budgets instead of steps
    batch_tokens: int | None = None  # --batch-tokens: global batch per optimizer step, in tokens
    micro_batch: int | None = None  # --micro-batch: sequences per forward/backward on each rank
    lr: float | None = None  # --lr: peak LR of every stage (None = each preset's)
    keep_checkpoints: int | None = None  # --keep-checkpoints N (None = 3): latest N kept, see docs/eventlog.md
    priority: int = 0  # --priority N: from tritterd's run queue, higher starts first (then first come)

    def stages(self) -> list[str]:
        """The presets this run trains, in order: ``PRESET_NAMES`` from ``start`` to ``end`` inclusive.

        Raises ValueError when ``start`` or ``end`` is not a preset name (``validate_config`` reports that first).
        """
        return list(PRESET_NAMES[PRESET_NAMES.index(self.start) : PRESET_NAMES.index(self.end) + 1])

    def total_steps(self) -> int:
        """Optimizer steps of the whole run; 0 (unknown until the trainer sizes its batch) with --tokens."""
        if self.tokens:
            return 0
        if self.stage_steps:
            return sum(self.stage_steps) if len(self.stage_steps) > 1 else self.stage_steps[0] * len(self.stages())
        return self.steps * len(self.stages())


def validate_config(config: RunConfig) -> str | None:
    """Return a one-line reason why ``config`` cannot run, or None when it is fine."""
    for flag, preset in (("--start", config.start), ("--end", config.end)):
        if preset not in PRESET_NAMES:
            return f"unknown preset {preset!r} for {flag} (choose from {', '.join(PRESET_NAMES)})"
    if PRESET_NAMES.index(config.start) > PRESET_NAMES.index(config.end):
        return f"--start {config.start} is bigger than --end {config.end}"
    if problem := _out_of_range(config):
        return problem
    if not -MAX_PRIORITY <= config.priority <= MAX_PRIORITY:
        return f"--priority must be between {-MAX_PRIORITY:,} and {MAX_PRIORITY:,}, got {config.priority}"
    if not 1 <= config.steps <= MAX_STEPS:
        return f"--steps must be between 1 and {MAX_STEPS:,}, got {config.steps}"
    if not 1 <= config.nproc <= MAX_NPROC:
        return f"--nproc must be between 1 and {MAX_NPROC}, got {config.nproc}"
    if not 0 <= config.seed <= MAX_SEED:
        return f"--seed must be between 0 and {MAX_SEED}, got {config.seed}"
    if config.grad_ckpt_every is not None and config.grad_ckpt_every < 0:
        return f"--grad-ckpt-every must be 0 (off) or more, got {config.grad_ckpt_every}"
    if config.grad_ckpt_every is not None and config.grad_ckpt_every > MAX_GRAD_CKPT_EVERY:
        return f"--grad-ckpt-every must be at most {MAX_GRAD_CKPT_EVERY:,}, got {config.grad_ckpt_every}"
    if config.checkpoint_every is not None and not 1 <= config.checkpoint_every <= MAX_STEPS:
        return f"--checkpoint-every must be between 1 and {MAX_STEPS:,}, got {config.checkpoint_every}"
    for flag, every in (("--eval-every", config.eval_every), ("--sample-every", config.sample_every)):
        if every is not None and every < 0:
            return f"{flag} must be 0 (off) or more, got {every}"
    if config.sample_prompts is not None:
        if not 1 <= len(config.sample_prompts) <= MAX_SAMPLE_PROMPTS:
            return f"--sample-prompts needs 1 to {MAX_SAMPLE_PROMPTS} prompts (one per line), got {len(config.sample_prompts)}"
        if any(not p.strip() or len(p) > MAX_PROMPT_CHARS for p in config.sample_prompts):
            return f"--sample-prompts: every prompt must be 1 to {MAX_PROMPT_CHARS} characters"
    if not config.text_field or len(config.text_field) > 200 or "\n" in config.text_field:
        return f"--text-field must be a field name (1 to 200 characters), got {config.text_field!r}"
    if config.upload and not config.hf_user:
        return "--upload needs --hf-user USER"
    if len(config.name) > 100 or any(c in config.name for c in "/\\\n\0"):
        return f"--name {config.name!r} is not a usable run name (no slashes, at most 100 characters)"
    return None


def _out_of_range(config: RunConfig) -> str | None:
    """Any numeric field (also ones added later) that is not finite or past ``MAX_NUMBER``.

    A request can carry any 64-bit integer or float; this is the daemon's catch-all, checked
    before the per-field rules.  Returns the one-line reason or None.
    """
    for name in config.__struct_fields__:
        value = getattr(config, name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if isinstance(v, float) and v != v or abs(v) > MAX_NUMBER:
                return f"--{name.replace('_', '-')} is out of range, got {v}"
    return None
