"""A small Llama-compatible decoder.

The module tree mirrors ``transformers.LlamaForCausalLM`` name for name, so
``state_dict()`` produces exactly its keys and a checkpoint plus ``hf_config()``
loads straight into transformers (tests check logits match). We keep our own
copy because it is small, has no hidden features (caches, masks, kernels) and
lets growth/checkpointing reach every tensor directly.

Construction is cheap and draws no random numbers: all weights start at zero
(norms at one) until ``init_weights`` fills them from an explicit generator, so
building a model never perturbs the global RNG stream and a 1b model can be
built quickly just to load a checkpoint into.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tritter.recipe.presets import ModelShape


class _Linear(nn.Linear):
    """Bias-free linear layer whose construction-time init is a cheap zero fill."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """Zero the weight (no random draw; ``init_weights`` fills it later)."""
        nn.init.zeros_(self.weight)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls run in for ``x``: the autocast dtype when autocast is on for its device, else ``x.dtype``."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), as ``transformers.LlamaRMSNorm``.

    ``forward``: x (B, T, C) in any float dtype → (B, T, C).  Statistics are fp32; under autocast
    the output is cast once to the autocast dtype, so the projections that read it (q/k/v,
    gate/up) do not each cast it again.  Without autocast the result equals transformers' bit
    for bit.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) → (B, T, C): ``weight * x / sqrt(mean(x**2, -1) + eps)``, in the compute dtype (see
        ``compute_dtype``)."""
        # Same op order as transformers (fp32 statistics, weight applied in x's dtype).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * x32.to(x.dtype)
        target = compute_dtype(x)
        return out if out.dtype == target else out.to(target)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables (Su et al. 2021, RoFormer), in transformers' layout.

    ``forward(seq_len, device, dtype)`` → (cos, sin), each (T, head_dim) in ``dtype``.  Callers
    pass the compute dtype (bf16 under autocast), so q and k are not promoted to fp32.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (T, D) in ``dtype`` on ``device``, for T = ``seq_len`` positions and D = ``head_dim``:
        angle ``pos * theta**(-2i/D)`` for the D/2 frequencies, repeated twice (transformers' layout).
        """
        # Recomputed each call (a few hundred flops) rather than kept as a buffer: a buffer would be
        # rounded by model.to(bfloat16) and left uninitialised by meta-device construction.
        dim = self.head_dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        pos = torch.arange(seq_len, device=device, dtype=torch.float)
        freqs = pos[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim], same layout as transformers
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(..., D) → (..., D): ``cat(-x2, x1)`` of the two halves of the last dim (RoPE's rotation, transformers' layout)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Multi-head causal self-attention with RoPE (no GQA, no bias), transformers' ``LlamaAttention`` names."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.num_heads = shape.num_heads
        self.head_dim = shape.head_dim
        inner = shape.num_heads * shape.head_dim
        self.q_proj = _Linear(shape.hidden_size, inner)
        self.k_proj = _Linear(shape.hidden_size, inner)
        self.v_proj = _Linear(shape.hidden_size, inner)
        self.o_proj = _Linear(inner, shape.hidden_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, T, C), cos/sin (T, D) → (B, T, C); causal self-attention, H heads of D = C / H."""
        b, t, _ = x.shape
        q, k, v = (
            proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """The feed-forward block: SwiGLU with gate/up (C → intermediate) and down (intermediate → C) projections."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.gate_proj = _Linear(shape.hidden_size, shape.intermediate_size)
        self.up_proj = _Linear(shape.hidden_size, shape.intermediate_size)
        self.down_proj = _Linear(shape.intermediate_size, shape.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) → (B, T, C): SwiGLU (Shazeer 2020), hidden width ``intermediate_size``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """One pre-norm transformer block: RMSNorm → attention → residual, RMSNorm → MLP → residual."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        # Registration order matches transformers so state_dict key order matches too.
        self.self_attn = Attention(shape)
        self.mlp = MLP(shape)
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, T, C) → (B, T, C): pre-norm attention then pre-norm MLP, each added to the residual."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The decoder body: token embedding (V, C), ``num_layers`` blocks, final RMSNorm and the RoPE tables;
    ``LlamaForCausalLM.forward`` runs it (it has no forward of its own).
    """

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(
            shape.vocab_size, shape.hidden_size, _weight=torch.zeros(shape.vocab_size, shape.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(shape.head_dim, shape.rope_theta)


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM; ``forward`` returns logits, or the mean loss when labels are given."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.model = LlamaModel(shape)
        self.lm_head = _Linear(shape.hidden_size, shape.vocab_size)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.grad_ckpt_every = 0

    def set_grad_checkpointing(self, every: int) -> None:
        """Recompute every N-th block in backward instead of storing its activations (0 = off)."""
        if every < 0:
            raise ValueError(f"grad checkpointing interval must be >= 0, got {every}")
        self.grad_ckpt_every = every

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits, or the mean next-token loss when ``labels`` is given.

        input_ids: (B, T) int64 token ids, T ≤ ``max_position_embeddings``.
        labels: (B, T) int64 targets (already shifted: labels[:, i] is the token after
        input_ids[:, i]); -100 marks positions to ignore.
        Returns logits (B, T, V) in the compute dtype, or a scalar fp32 cross-entropy (nats/token).
        Raises ValueError when T exceeds the model's context.
        """
        seq_len, max_len = input_ids.shape[1], self.shape.max_position_embeddings
        if seq_len > max_len:
            raise ValueError(f"sequence length {seq_len} > max_position_embeddings {max_len}")
        h = self.model.embed_tokens(input_ids)  # (B, T, C), fp32 residual stream
        cos, sin = self.model.rotary_emb(seq_len, h.device, compute_dtype(h))  # (T, D) each
        use_ckpt = self.grad_ckpt_every > 0 and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if use_ckpt and i % self.grad_ckpt_every == 0:
                h = checkpoint(layer, h, cos, sin, use_reentrant=False)
            else:
                h = layer(h, cos, sin)
        logits = self.lm_head(self.model.norm(h))  # (B, T, V)
        if labels is None:
            return logits
        # fp32 loss even under autocast; -100 marks positions to ignore (padding).
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _normal_(t: Tensor, std: float, generator: torch.Generator) -> None:
    # Draw on the generator's device in fp32 so the init is identical wherever the model lives.
    if t.device == generator.device and t.dtype == torch.float32:
        t.normal_(0.0, std, generator=generator)
    else:
        t.copy_(torch.empty(t.shape, device=generator.device).normal_(0.0, std, generator=generator))


@torch.no_grad()
def init_weights(model: LlamaForCausalLM, generator: torch.Generator) -> None:
    """Seeded init: N(0, 0.02), residual-writing projections scaled by 1/sqrt(2 * layers), norms one."""
    std = 0.02
    resid_std = std / math.sqrt(2 * model.shape.num_layers)  # GPT-2 style: keeps residual variance flat in depth
    for name, module in model.named_modules():  # fixed order -> deterministic draws
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Embedding):
            _normal_(module.weight, std, generator)
        elif isinstance(module, nn.Linear):
            if name == "lm_head" and model.shape.tie_word_embeddings:
                continue  # same tensor as embed_tokens, already drawn
            is_resid = name.endswith(("o_proj", "down_proj"))
            _normal_(module.weight, resid_std if is_resid else std, generator)


def hf_config(shape: ModelShape) -> dict:
    """A ``config.json`` dict that ``transformers.LlamaConfig`` accepts for this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        # rope_theta for transformers 4.x, rope_parameters for 5.x.
        "rope_theta": shape.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 1,
        "use_cache": True,
        "pretraining_tp": 1,
    }


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (``parameters()`` already yields a tied tensor once)."""
    return sum(p.numel() for p in model.parameters())
