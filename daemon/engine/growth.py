"""Function-preserving growth of a trained model into a bigger preset.

Method: zero-padding with a residual-stream rescale. It works for any widths
(no integer multiples needed) and is exact in real arithmetic, including the
RMSNorm epsilon; in fp32 the logits match to ~1e-6 relative.

Let ``d``/``D`` be the old/new hidden size and ``c = sqrt(D / d)``.

* Residual stream. The new model carries ``[c * h_old, 0]``: the embedding's
  old columns are multiplied by ``c`` and its new columns are zero, and every
  matrix that *writes* the stream (``o_proj``, ``down_proj``) has its old block
  multiplied by ``c`` and every other entry zero, so the new dims stay zero.
  Why ``c``: the mean square over ``D`` dims of ``[c*h, 0]`` equals the old mean
  square over ``d`` dims, so every RMSNorm divides by exactly the same number as
  before -- the epsilon term is unchanged. (Plain zero-padding without ``c``
  shrinks the mean square by ``d/D`` and effectively multiplies eps by ``D/d``,
  a ~1% logit error for a small model whose embeddings have rms ~0.02.)
* RMSNorm weights. The normalised vector is ``c`` times the old one on the old
  dims, so old weights are divided by ``c``; with tied embeddings the final
  norm is divided by ``c**2`` because the output embedding (same tensor as the
  input one) was multiplied by ``c``. New norm dims get the mean of the scaled
  old weights -- they multiply zeros now, but must be non-zero so gradient
  reaches the new residual dims.
* Heads / FFN units / new residual dims. Readers (``q/k/v``, ``gate/up``, an
  untied ``lm_head``) keep the old block and get fresh N(0, 0.02) rows for new
  heads/units and columns for new dims; writers get zero there, so new units
  contribute nothing until trained. Head dim never changes, so RoPE is untouched.
* Layers. New layers are fresh blocks whose ``o_proj``/``down_proj`` are zero
  (exact identities), interleaved evenly: old layer ``i`` is followed by
  ``floor((i+1)*n/L) - floor(i*n/L)`` new ones (``n`` new, ``L`` old). That
  puts one after every old layer for 2->4 and spreads 12->16 as one after
  every third; interleaving keeps the trained layers' relative order and
  spacing instead of stacking all fresh layers at one end.

Gradient flow: zero blocks get non-zero gradients on the first backward
because the random reader columns/rows make the loss depend on the new dims
and units. One transient exception: the logits see the new residual dims only
through the (zero, tied) new embedding columns, and a fresh block's readers
are hidden behind its zero writers, so rows writing into new dims from the
last old block's MLP onwards get no gradient on step 1. They do from step 2,
once the first update has made those embedding columns and the fresh blocks'
writers non-zero (tests/engine/test_growth.py checks both steps).

HyperCloning (duplicating neurons for integer width multiples) keeps every
weight non-zero, but needs integer ratios (100m->500m is 2x, 500m->1b is
4/3x) and still needs the same eps treatment, so zero-padding is used for all
transitions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tritter.daemon.engine.model import DecoderLayer, LlamaForCausalLM, init_weights
from tritter.daemon.engine.presets import ModelShape


def _check_growable(src: ModelShape, dst: ModelShape) -> None:
    for field in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        if getattr(dst, field) < getattr(src, field):
            raise ValueError(f"cannot grow: target {field} {getattr(dst, field)} < current {getattr(src, field)}")
    for field in ("head_dim", "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings"):
        if getattr(dst, field) != getattr(src, field):
            raise ValueError(f"cannot grow: {field} differs ({getattr(src, field)} -> {getattr(dst, field)})")


def layer_mapping(old_layers: int, new_layers: int) -> list[int]:
    """Index in the grown model of each old layer (new layers fill the gaps)."""
    n_new = new_layers - old_layers
    mapping, pos = [], 0
    for i in range(old_layers):
        mapping.append(pos)
        pos += 1 + (i + 1) * n_new // old_layers - i * n_new // old_layers
    return mapping


def _grow_norm(old: Tensor, new: Tensor, scale: float) -> None:
    d = old.shape[0]
    new[:d] = old * scale
    new[d:] = (old * scale).mean()


def _grow_reader(old: Tensor, new: Tensor) -> None:
    # Old block copied; new rows/columns keep their fresh random init.
    new[: old.shape[0], : old.shape[1]] = old


def _grow_writer(old: Tensor, new: Tensor, c: float) -> None:
    new.zero_()
    new[: old.shape[0], : old.shape[1]] = old * c


def _grow_layer(old: DecoderLayer, new: DecoderLayer, c: float) -> None:
    oa, na = old.self_attn, new.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        _grow_reader(getattr(oa, name).weight, getattr(na, name).weight)
    _grow_writer(oa.o_proj.weight, na.o_proj.weight, c)
    _grow_reader(old.mlp.gate_proj.weight, new.mlp.gate_proj.weight)
    _grow_reader(old.mlp.up_proj.weight, new.mlp.up_proj.weight)
    _grow_writer(old.mlp.down_proj.weight, new.mlp.down_proj.weight, c)
    _grow_norm(old.input_layernorm.weight, new.input_layernorm.weight, 1 / c)
    _grow_norm(old.post_attention_layernorm.weight, new.post_attention_layernorm.weight, 1 / c)


@torch.no_grad()
def grow(model: LlamaForCausalLM, target: ModelShape, generator: torch.Generator) -> LlamaForCausalLM:
    """Return a new ``target``-shaped model computing the same function as ``model``.

    The new model lives on the same device/dtype and has the same train/eval mode;
    ``generator`` seeds the fresh weights. Gradient checkpointing is left off.
    """
    src = model.shape
    _check_growable(src, target)
    ref = next(model.parameters())
    with torch.device(ref.device):
        grown = LlamaForCausalLM(target)
    grown.to(ref.dtype)
    init_weights(grown, generator)  # every piece not overwritten below stays fresh

    c = math.sqrt(target.hidden_size / src.hidden_size)
    d = src.hidden_size
    emb = grown.model.embed_tokens.weight
    emb[:, :d] = model.model.embed_tokens.weight * c
    emb[:, d:] = 0

    mapping = layer_mapping(src.num_layers, target.num_layers)
    for j, layer in enumerate(grown.model.layers):
        if j not in mapping:  # fresh identity block
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    for i, j in enumerate(mapping):
        _grow_layer(model.model.layers[i], grown.model.layers[j], c)

    if target.tie_word_embeddings:
        _grow_norm(model.model.norm.weight, grown.model.norm.weight, 1 / c**2)
    else:
        _grow_norm(model.model.norm.weight, grown.model.norm.weight, 1 / c)
        _grow_reader(model.lm_head.weight, grown.lm_head.weight)

    grown.train(model.training)
    return grown
