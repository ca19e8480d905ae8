"""Memory and FLOPs of a run, per stage, by arithmetic alone (no torch): ``tritterctl plan``.

Everything here is counted from the model shape (``recipe.presets``), the batch
(``recipe.budget.resolve_batch``, the same function the trainer uses) and what the training code
keeps in memory.  Tests hold the counts to the real thing: ``tests/test_planner.py`` builds every
preset on torch's ``meta`` device and compares parameters, weights, gradients and AdamW state
byte for byte, the hybrid predictor's buffers on a real model, and the activation bytes autograd
saves in a forward under bf16 autocast (exact, at the 100m shape).

Memory (bytes, per rank; "eager" PyTorch, which is what the model is without torch.compile):

* weights: fp32, 4 B/param; gradients: fp32, 4 B/param (autocast keeps master weights and their
  gradients fp32); AdamW: ``exp_avg`` + ``exp_avg_sq`` fp32 = 8 B/param, plus a 4-byte ``step``
  per parameter tensor.
* hybrid: the update predictor's fp16 update history (``hybrid_bytes_per_param``: 4 B/param).
* bf16 weight copies (CUDA): autocast caches one bf16 cast of every matmul weight during the
  forward (2 B per matmul parameter); the casts of stored blocks stay alive through backward.
* activations kept for backward, per token of a micro-batch (``activation_bytes_per_token``),
  with ``a`` the activation dtype size (2 under bf16 autocast on CUDA, 4 on CPU), H hidden,
  F ffn, h heads, V vocab:

  - a stored block: ``16H`` (fp32 residual input and normalised input of both RMSNorms)
    ``+ 2aH`` (the two norm outputs read by the projections) ``+ 4aH`` (q, k, v and the attention
    output, kept by SDPA) ``+ 4aF`` (gate, up, silu(gate) and their product) ``+ 4h`` (SDPA's
    fp32 log-sum-exp) ``+ 8`` (two fp32 rsqrt);
  - a checkpointed block (``--grad-ckpt-every``): only its fp32 input, ``4H``;
  - the output: ``8H + aH`` (final norm) ``+ 4V`` (fp32 log-softmax) ``+ 4 + 16`` (rsqrt, int64
    inputs and labels), plus the RoPE tables ``2 * a * head_dim`` per position and one fp32 scalar.

* transient at the peak (the end of the forward / start of the backward): the logits in bf16
  (``2V``) and fp32 (``4V``) while the log-softmax is taken, then its gradient (``8V``), plus
  on CUDA every bf16 weight cast; or one checkpointed block being recomputed; or the optimizer
  step's temporaries (foreach AdamW on CPU: ``4 B/param``; fused AdamW on CUDA: none).
* DDP: the all-reduce buckets are the gradients themselves (``gradient_as_bucket_view=True`` in
  ``daemon/engine/distributed.py``), so DDP adds nothing; without it, another 4 B/param.

Compiled (``torch.compile``, inductor; the default with ``--cuda``): inductor's partitioner
(min-cut rematerialisation after its joint-graph passes) keeps fewer activations and recomputes
the cheap ones in the backward.  Counted from the tensors its partition saves, at every preset's
shape (``tests/test_planner.py`` captures the partition on CPU under bf16 autocast):

  - a stored block: ``20H + 6F + 4h + 8``: two fp32 residual-stream states (``8H``), q, k, v and
    the attention output kept by SDPA (``8H``), two bf16 hidden-size tensors (``4H``: a norm
    output, the attention projection's output), gate, up and their silu product (``6F``), SDPA's
    fp32 log-sum-exp (``4h``) and two fp32 rsqrt (``8``);
  - the output: ``4H`` (two bf16 hidden-size tensors, the final norm's output among them)
    ``+ 2V`` (the logits, kept in bf16: the fused cross-entropy recomputes the log-softmax)
    ``+ 12`` (rsqrt, max, log-sum) ``+ 16`` (int64 inputs and labels);
  - a checkpointed block: its fp32 input, ``4H``, as eager (the partition keeps slightly less:
    the count is within 6% above it with checkpointing, exact without);
  - transient: none at the output (the logits' gradient is computed in place of the logits);
    with checkpointing, one block recomputed (its activations and bf16 weight casts).
  Measured on an H200 (``bench/gpu.py``, docs/benchmarks.md): 100m, 64 x 1024, no checkpointing,
  and 1b, 16 x 1024, every 4th block, peak within a few percent of this count.

The micro-batch fit (``fit_micro_batch``) uses the eager count either way: the trainer's CUDA
probe measures an eager forward + backward (compiling every candidate size would take minutes), so
a compiled run peaks below what its micro-batch was sized for.

Predicted peak = weights + gradients + AdamW + hybrid + kept activations of one micro-batch +
the largest transient (+ DDP buckets).  Gradients are counted as always allocated: with gradient
accumulation they are (from the second micro-batch on).  The CUDA context and allocator slack
are outside this figure, as they are outside ``torch.cuda.max_memory_allocated``.

FLOPs per token (training: forward + backward), PaLM's model FLOPs (Chowdhery et al. 2022,
appendix B; the form nanoGPT's ``estimate_mfu`` uses): ``6N + 12 * L * h * d * T``, with N the
parameters (the tied embedding counted once: it is the lm_head matmul), L layers, h heads of
dimension d, T the sequence length.  ``6N`` is the matmuls (2 per parameter forward, 4 backward;
Kaplan et al. 2020, section 2.1); ``12LhdT`` the attention scores and the weighted sum over T keys,
counted over the full T x T square as PaLM does (a causal kernel does about half).  Recomputation
by gradient checkpointing is not model FLOPs (it is in hardware FLOPs), so MFU ignores it.
MFU = achieved model FLOP/s / peak: the H100 SXM's dense bf16 peak is 989 TFLOP/s (NVIDIA H100
datasheet), so 40% MFU means ``0.4 * 989e12 / flops_per_token`` tokens/s per GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tritter.recipe.budget import BatchPlan, resolve_batch
from tritter.recipe.presets import ModelShape, Preset, get_preset, stage_names, with_vocab

H100_BF16_DENSE_FLOPS = 989e12  # FLOP/s, NVIDIA H100 SXM datasheet (dense, no sparsity)
# Dense bf16 peak FLOP/s per GPU, keyed by a part of the name CUDA reports (vendor datasheets, SXM
# parts, no sparsity): the denominator of MFU.
GPU_BF16_DENSE_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
TARGET_MFU = 0.40
DEVICE_BYTES_H100 = 80 * 10**9  # one 80 GB card: what --cuda plans fit a micro-batch into
FIT_FRACTION = 0.90  # of device memory a plan may fill (CUDA context, allocator slack, eval)
DDP_BUCKET_VIEW = True  # daemon/engine/distributed.py wraps with gradient_as_bucket_view=True

FP32 = 4
BF16 = 2


# -- counts from the shape --------------------------------------------------------------------
def parameter_count(shape: ModelShape) -> int:
    """Unique parameters of ``LlamaForCausalLM(shape)`` (a tied embedding counted once).

    Per block: q, k, v, o (each ``H x h*d``), gate, up, down (``H x F``), two RMSNorm weights (``H``);
    plus the embedding ``V x H``, the final norm ``H`` and, untied, the lm_head ``V x H``.
    """
    inner = shape.num_heads * shape.head_dim
    block = 4 * shape.hidden_size * inner + 3 * shape.hidden_size * shape.intermediate_size + 2 * shape.hidden_size
    head = 0 if shape.tie_word_embeddings else shape.vocab_size * shape.hidden_size
    return shape.vocab_size * shape.hidden_size + shape.num_layers * block + shape.hidden_size + head


def parameter_tensors(shape: ModelShape) -> int:
    """Parameter tensors (AdamW keeps one ``step`` scalar for each): 9 per block, embedding, norm, head."""
    return shape.num_layers * 9 + 2 + (0 if shape.tie_word_embeddings else 1)


def block_matmul_params(shape: ModelShape) -> int:
    """Parameters of one block's seven projections (the ones autocast casts to bf16)."""
    inner = shape.num_heads * shape.head_dim
    return 4 * shape.hidden_size * inner + 3 * shape.hidden_size * shape.intermediate_size


def matmul_params(shape: ModelShape) -> int:
    """Every parameter that is a matmul weight: all blocks' projections plus the lm_head."""
    return shape.num_layers * block_matmul_params(shape) + shape.vocab_size * shape.hidden_size


def hybrid_bytes_per_param(order: int = 2, element_bytes: int = BF16) -> int:
    """The hybrid predictor's state per parameter: the last ``order`` updates in fp16 (2 bytes).

    Mirrors ``daemon/engine/hybrid.py`` (``UpdatePredictor``'s lean state: ``HybridSettings.order``
    fp16 update tensors; the Gram band of the ``history`` fit is host scalars);
    ``tests/test_planner.py`` checks it against every tensor a real ``HybridController`` holds.
    """
    return order * element_bytes


def flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Training FLOPs per token, ``6N + 12 * L * h * d * T`` (PaLM appendix B; see the module doc)."""
    attention = 12 * shape.num_layers * shape.num_heads * shape.head_dim * seq_len
    return 6 * parameter_count(shape) + attention


def gpu_peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU CUDA calls ``device_name`` (``GPU_BF16_DENSE_FLOPS``); None if unknown."""
    return next((flops for key, flops in GPU_BF16_DENSE_FLOPS.items() if key in device_name), None)


def peak_flops_override(value: str | None) -> float | None:
    """``TRITTER_PEAK_TFLOPS``'s value (TFLOP/s, text) as FLOP/s; None when unset or empty.

    Raises ValueError (one line, naming the variable) when it is not a positive number.
    """
    if not value:
        return None
    try:
        tflops = float(value)
    except ValueError:
        tflops = 0.0
    if not (tflops > 0 and tflops != float("inf")):
        raise ValueError(f"TRITTER_PEAK_TFLOPS must be a positive number of TFLOP/s, got {value!r}")
    return tflops * 1e12


def model_flops_utilization(tokens_per_s: float, flops_per_token_: float, peak_flops: float) -> float:
    """MFU (0..1): achieved model FLOP/s ÷ peak, ``tokens_per_s x flops_per_token / peak_flops``.

    ``tokens_per_s`` and ``peak_flops`` over the same GPUs (all ranks: the global rate and
    ranks x one GPU's peak).  PaLM's definition (Chowdhery et al. 2022, appendix B): recomputation
    by gradient checkpointing is not counted.
    """
    return tokens_per_s * flops_per_token_ / peak_flops


def block_activation_bytes(shape: ModelShape, act: int) -> int:
    """Bytes per token autograd keeps for one stored block (``act``: activation dtype size)."""
    h, f = shape.hidden_size, shape.intermediate_size
    return 16 * h + 2 * act * h + 4 * act * h + 4 * act * f + 4 * shape.num_heads + 8


def output_activation_bytes(shape: ModelShape, act: int) -> int:
    """Bytes per token kept for the final norm, the fp32 log-softmax, inputs and labels."""
    return 8 * shape.hidden_size + act * shape.hidden_size + 4 * shape.vocab_size + 4 + 16


def compiled_block_activation_bytes(shape: ModelShape) -> int:
    """Bytes per token inductor keeps for one stored block under bf16 autocast: ``20H + 6F + 4h + 8``."""
    h, f = shape.hidden_size, shape.intermediate_size
    return 20 * h + 6 * f + 4 * shape.num_heads + 8


def compiled_output_activation_bytes(shape: ModelShape) -> int:
    """Bytes per token inductor keeps at the output: final norm, bf16 logits, their max and log-sum."""
    return 4 * shape.hidden_size + 2 * shape.vocab_size + 12 + 16


def checkpointed_blocks(num_layers: int, every: int) -> int:
    """Blocks that ``set_grad_checkpointing(every)`` recomputes: 0, every, 2*every, ... (0 = none)."""
    return 0 if every <= 0 else len(range(0, num_layers, every))


def activation_bytes_per_token(shape: ModelShape, act: int, grad_ckpt_every: int, compiled: bool = False) -> int:
    """Kept activation bytes per token of a micro-batch (without the per-position RoPE tables).

    ``act``: activation dtype size in bytes (2 under bf16 autocast, 4 in fp32); ``compiled``: the
    inductor-compiled training graph (bf16 autocast) instead of eager PyTorch.
    """
    ckpt = checkpointed_blocks(shape.num_layers, grad_ckpt_every)
    stored = shape.num_layers - ckpt
    if compiled:
        block, output = compiled_block_activation_bytes(shape), compiled_output_activation_bytes(shape)
    else:
        block, output = block_activation_bytes(shape, act), output_activation_bytes(shape, act)
    return stored * block + ckpt * 4 * shape.hidden_size + output


# -- one stage --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StagePlan:
    """What one stage costs.  Bytes are per rank; ``*_per_s`` per GPU unless named ``total``."""

    stage: str
    params: int
    seq_len: int
    micro_batch: int  # sequences per forward/backward on each rank
    accum: int  # micro-batches per optimizer step on each rank
    nproc: int
    tokens_per_step: int  # global batch, tokens per optimizer step
    grad_ckpt_every: int
    activation_dtype: str  # bf16 (CUDA autocast) | fp32
    compiled: bool  # torch.compile (inductor) training graph: fewer kept activations than eager
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    hybrid_bytes: int
    weight_copies_bytes: int  # bf16 casts of the matmul weights under autocast (0 on CPU)
    activation_bytes_per_token: int
    activations_bytes: int  # kept for backward, one micro-batch
    transient_bytes: int
    ddp_bucket_bytes: int
    peak_bytes: int
    eager_peak_bytes: int  # the same without torch.compile: what the micro-batch fit and the CUDA probe size for
    flops_per_token: int
    flops_per_step: int
    tokens_per_s_at_target_mfu: float  # per GPU, at TARGET_MFU of an H100's dense bf16 peak

    def to_dict(self) -> dict[str, object]:
        """The plan as a plain dict (field name → value, units as in the fields), for JSON output."""
        return asdict(self)


def plan_stage(
    preset: Preset,
    *,
    cuda: bool,
    batch: BatchPlan,
    grad_ckpt_every: int,
    hybrid: bool = True,
    hybrid_order: int = 2,
    compiled: bool = False,
) -> StagePlan:
    """Memory and FLOPs of training ``preset`` with ``batch`` (see the module doc for each term).

    ``compiled`` (CUDA only: the compiled graph is counted under bf16 autocast) counts what
    inductor keeps instead of eager PyTorch.  Returns a StagePlan in bytes, FLOPs and tokens/s.
    Raises nothing for any valid preset/batch.
    """
    shape = preset.shape
    n = parameter_count(shape)
    compiled = compiled and cuda
    act = BF16 if cuda else FP32
    tokens = batch.micro_batch * batch.seq_len  # one micro-batch on one rank
    weights, grads = FP32 * n, FP32 * n
    optimizer = 2 * FP32 * n + FP32 * parameter_tensors(shape)
    hybrid_bytes = hybrid_bytes_per_param(hybrid_order) * n if hybrid else 0
    ddp = 0 if batch.world == 1 or DDP_BUCKET_VIEW else FP32 * n
    static = weights + grads + optimizer + hybrid_bytes + ddp
    optimizer_temp = 0 if cuda else FP32 * n  # foreach AdamW's sqrt(exp_avg_sq) list; fused has none
    rope = 2 * act * shape.head_dim * batch.seq_len
    ckpt = checkpointed_blocks(shape.num_layers, grad_ckpt_every)
    casts_all = BF16 * matmul_params(shape) if cuda else 0
    casts_kept = casts_all - (BF16 * ckpt * block_matmul_params(shape) if cuda else 0)

    def kept(compiled_graph: bool) -> tuple[int, int, int]:
        """(activation bytes per token, kept activation bytes, largest transient) of one micro-batch."""
        per_token = activation_bytes_per_token(shape, act, grad_ckpt_every, compiled_graph)
        activations = per_token * tokens + rope + 4  # + the loss's fp32 total weight (a scalar)
        if compiled_graph:
            block = compiled_block_activation_bytes(shape)
            transient = block * tokens + BF16 * block_matmul_params(shape) if ckpt else 0
            return per_token, activations, transient
        v = shape.vocab_size
        logits_forward = (2 * v + 4 * v if cuda else 0) * tokens + casts_all  # bf16 logits and their fp32 copy
        logits_backward = 8 * v * tokens + casts_kept  # log-softmax's gradient in and out, fp32
        recompute = block_activation_bytes(shape, act) * tokens + BF16 * block_matmul_params(shape) if ckpt else 0
        return per_token, activations, max(logits_forward, logits_backward, recompute)

    eager = kept(False)
    _, eager_activations, eager_transient = eager  # eager's transients include the weight casts
    eager_peak = static + max(eager_activations + eager_transient, optimizer_temp)
    per_token, activations, transient = kept(True) if compiled else eager
    # Compiled, the kept bf16 weight casts are saved tensors of the graph, held through the backward.
    peak = static + max(activations + transient + casts_kept, optimizer_temp) if compiled else eager_peak
    fpt = flops_per_token(shape, batch.seq_len)
    return StagePlan(
        stage=preset.name, params=n, seq_len=batch.seq_len, micro_batch=batch.micro_batch, accum=batch.accum,
        nproc=batch.world, tokens_per_step=batch.tokens_per_step, grad_ckpt_every=grad_ckpt_every,
        activation_dtype="bf16" if cuda else "fp32", compiled=compiled, weights_bytes=weights, grads_bytes=grads,
        optimizer_bytes=optimizer, hybrid_bytes=hybrid_bytes, weight_copies_bytes=casts_kept,
        activation_bytes_per_token=per_token, activations_bytes=activations, transient_bytes=transient,
        ddp_bucket_bytes=ddp, peak_bytes=peak, eager_peak_bytes=eager_peak, flops_per_token=fpt,
        flops_per_step=fpt * batch.tokens_per_step, tokens_per_s_at_target_mfu=TARGET_MFU * H100_BF16_DENSE_FLOPS / fpt,
    )


def preset_batch_tokens(preset: Preset) -> int | None:
    """The preset's default global batch in tokens (None: one micro-batch per rank per step)."""
    return getattr(preset.train, "batch_tokens", None)


def fit_micro_batch(preset: Preset, *, world: int, batch_tokens: int | None, grad_ckpt_every: int,
                    hybrid: bool, device_bytes: int = DEVICE_BYTES_H100) -> int:
    """The largest power-of-two micro-batch (at most the per-rank batch) whose predicted peak fits
    ``FIT_FRACTION`` of ``device_bytes`` on CUDA; 1 when even that does not fit."""
    seq = preset.train.seq_len
    target = batch_tokens if batch_tokens is not None else preset_batch_tokens(preset)
    rows = max(1, (target or preset.train.batch_size * seq * world) // (seq * world))
    best, micro = 1, 1
    while micro <= rows:
        batch = resolve_batch(seq, preset.train.batch_size, target, world, batch_tokens, micro)
        plan = plan_stage(preset, cuda=True, batch=batch, grad_ckpt_every=grad_ckpt_every, hybrid=hybrid)
        if plan.peak_bytes > FIT_FRACTION * device_bytes:
            break
        best, micro = micro, micro * 2
    return best


def plan_run(
    start: str,
    end: str,
    *,
    cuda: bool = False,
    batch_tokens: int | None = None,
    micro_batch: int | None = None,
    grad_ckpt_every: int | None = None,
    nproc: int = 1,
    hybrid: bool = True,
    compiled: bool | None = None,
    vocab_size: int | None = None,
) -> list[StagePlan]:
    """One StagePlan per stage from ``start`` to ``end`` (preset names), with the run's overrides.

    ``vocab_size``: the model's embedding rows for the run's tokenizer (``start --tokenizer``;
    formats.tokenizer.model_vocab_size); None: the presets' own.

    ``micro_batch`` None: the preset's batch on CPU; on CUDA the largest power of two whose eager
    peak fits an 80 GB card (what the trainer's probe would find, by this model).
    ``grad_ckpt_every`` None: the preset's.  ``compiled`` None: as the trainer, compiled on CUDA
    (``start --no-compile`` / ``plan --no-compile``: False).  Raises ValueError (BudgetError) for
    unknown presets or values below 1.
    """
    compiled = cuda if compiled is None else compiled
    plans = []
    for name in stage_names(start, end):
        preset = get_preset(name)
        if vocab_size is not None:
            preset = with_vocab(preset, vocab_size)
        every = preset.train.grad_ckpt_every if grad_ckpt_every is None else grad_ckpt_every
        micro = micro_batch
        if micro is None and cuda:
            micro = fit_micro_batch(preset, world=nproc, batch_tokens=batch_tokens, grad_ckpt_every=every, hybrid=hybrid)
        batch = resolve_batch(
            preset.train.seq_len, preset.train.batch_size, preset_batch_tokens(preset), nproc, batch_tokens, micro
        )
        plans.append(plan_stage(preset, cuda=cuda, batch=batch, grad_ckpt_every=every, hybrid=hybrid, compiled=compiled))
    return plans


# -- presentation -----------------------------------------------------------------------------
def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}"


def _count(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


ROWS: tuple[tuple[str, str], ...] = (
    ("parameters", "params"),
    ("micro-batch x seq", ""),
    ("accumulation steps", "accum"),
    ("tokens per step", "tokens_per_step"),
    ("grad ckpt every", "grad_ckpt_every"),
    ("weights GiB", "weights_bytes"),
    ("grads GiB", "grads_bytes"),
    ("AdamW GiB", "optimizer_bytes"),
    ("hybrid GiB", "hybrid_bytes"),
    ("bf16 weight copies GiB", "weight_copies_bytes"),
    ("activations KiB/token", "activation_bytes_per_token"),
    ("activations GiB", "activations_bytes"),
    ("transient GiB", "transient_bytes"),
    ("DDP buckets GiB", "ddp_bucket_bytes"),
    ("peak GiB", "peak_bytes"),
    ("peak eager GiB", "eager_peak_bytes"),
    ("FLOPs/token", "flops_per_token"),
    ("tok/s/GPU at 40% MFU", "tokens_per_s_at_target_mfu"),
)


def _aligned(rows: list[list[str]]) -> list[str]:
    """Text lines of a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def format_plan(plans: list[StagePlan]) -> str:
    """A table: one column per stage, one row per figure (GiB = 2^30 bytes, per rank)."""
    header = ["", *(p.stage for p in plans)]
    rows = [header]
    for label, field in ROWS:
        if field == "eager_peak_bytes" and not any(p.compiled for p in plans):
            continue  # the same as the peak
        cells = [label]
        for p in plans:
            if label.startswith("micro-batch"):
                cells.append(f"{p.micro_batch} x {p.seq_len}")
            elif field.endswith("_bytes"):
                cells.append(_gib(getattr(p, field)))
            elif field == "activation_bytes_per_token":
                cells.append(f"{p.activation_bytes_per_token / 1024:.1f}")
            elif field in ("params", "tokens_per_step"):
                cells.append(f"{getattr(p, field):,}")
            elif field in ("flops_per_token", "tokens_per_s_at_target_mfu"):
                cells.append(_count(getattr(p, field)))
            else:
                cells.append(str(getattr(p, field)))
        rows.append(cells)
    lines = _aligned(rows)
    if plans and plans[0].activation_dtype == "bf16":
        compiled = ", torch.compile" if plans[0].compiled else ""
        lines.append(f"per rank, cuda (bf16 autocast, fused AdamW{compiled}); peak excludes the CUDA context. "
                     "40% MFU of an H100 (989 TFLOP/s dense bf16).")
    else:
        lines.append("per rank, cpu (fp32). Tokens/s: what one H100 would do at 40% MFU (989 TFLOP/s dense bf16).")
    return "\n".join(lines)


# -- a run's budget ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StageBudget:
    """One stage's share of a run's training compute: ``tokens`` trained, ``flops`` = tokens x
    the plan's FLOPs per token (6N + attention, as ``flops_per_token``), ``share`` of the run's
    FLOPs (0..1) and ``gpu_hours`` at ``TARGET_MFU`` of an H100 (all GPUs together)."""

    stage: str
    tokens: int
    flops: float
    share: float
    gpu_hours: float


def budget_run(plans: list[StagePlan], tokens: list[int]) -> list[StageBudget]:
    """Per-stage training FLOPs of ``plans`` trained on ``tokens`` (one count per stage, as
    ``recipe.budget.per_stage`` makes them).  Raises ValueError when the lengths differ."""
    if len(tokens) != len(plans):
        raise ValueError(f"{len(tokens)} token budgets for {len(plans)} stages")
    flops = [t * p.flops_per_token for t, p in zip(tokens, plans)]
    total = sum(flops) or 1.0
    return [StageBudget(p.stage, t, f, f / total, t / p.tokens_per_s_at_target_mfu / 3600)
            for p, t, f in zip(plans, tokens, flops)]


def format_budget(budgets: list[StageBudget]) -> str:
    """Rows to print under ``format_plan``: tokens, training FLOPs, share of the run's FLOPs, and
    GPU-hours at 40% MFU per stage, with the run's totals."""
    tokens = [_count(b.tokens).replace("G", "B") for b in budgets]  # B for billions of tokens, as --tokens takes them
    rows = [("training tokens", tokens, _count(sum(b.tokens for b in budgets)).replace("G", "B")),
            ("training FLOPs", [f"{b.flops:.3g}" for b in budgets], f"{sum(b.flops for b in budgets):.3g}"),
            ("share of FLOPs", [f"{b.share:.0%}" for b in budgets], "100%"),
            ("GPU-hours at 40% MFU", [f"{b.gpu_hours:.1f}" for b in budgets], f"{sum(b.gpu_hours for b in budgets):.1f}")]
    header = ["", *(b.stage for b in budgets), "run"]
    table = [header, *([label, *cells, total] for label, cells, total in rows)]
    lines = _aligned(table)
    lines.append("Growth pays most with most of the FLOPs before the last stage (docs/growth.md: 3/4 measured best).")
    return "\n".join(lines)
