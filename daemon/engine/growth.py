"""Function-preserving growth of a trained model into a bigger preset.

Two exact methods, both matching the old logits to ~1e-6 relative in fp32, RMSNorm epsilon
included: zero-padding (the default, any widths) and cloning (integer width ratios only).
The trainer zero-pads: in the growth study (bench/growth_study.py, docs/growth.md) the padded
model trained on to a lower loss than the cloned one in every seed; cloning stays available for
experiments.

Cloning (HyperCloning / Net2Net style). Let ``k = D / d``.

* Residual stream: ``k`` copies of the old one (new dim ``j`` copies old dim ``j % d``). Copies
  leave every mean square -- hence every RMSNorm's output, eps included -- unchanged, so norm
  weights and the embedding are copied as they are.
* Heads and FFN units: new unit ``j`` copies old unit ``j % n`` (round-robin, so uneven counts
  such as 704 -> 2304 FFN units work too); head dim never changes, so RoPE is untouched.
* Every matrix reads copied inputs, so each old weight is split evenly between its copies
  (``w / count``) and its outputs are copied. A copy-split alone would keep the copies identical
  forever (identical inputs give identical gradients), so zero-sum noise (``CLONE_NOISE`` x the
  weight's std) is added across each group of copies: the function is unchanged, but the residual
  copies get different gradients on step 1 and the whole width trains from step 2.
* Tied output embedding: the copied embedding reads ``k`` copies of the final hidden state, so
  the final norm weight is divided by ``k``.

Zero-padding with a residual rescale (any widths). Let ``c = sqrt(D / d)``.

* The residual stream becomes ``[c * h_old, 0]``: the embedding's old columns and every writer's
  (``o_proj``, ``down_proj``) old block are multiplied by ``c``, everything else that writes the
  stream is zero. ``c`` keeps the mean square over ``D`` dims equal to the old one over ``d``, so
  every RMSNorm divides by the same number (plain zero-padding shrinks it by ``d/D``, i.e.
  multiplies eps by ``D/d``: a ~1% logit error for small models with rms ~0.02 embeddings).
* Norm weights are divided by ``c`` (the tied final norm by ``c**2``); new norm dims get the mean
  of the old ones so gradient reaches the new dims.
* Readers (``q/k/v``, ``gate/up``) get fresh N(0, 0.02) rows/columns for new heads, units and
  dims; writers get zeros there. Zero blocks get gradients from step 1, except new-dim rows from
  the last old block's MLP onwards (the logits see new dims only through the still-zero new
  embedding columns), which do from step 2 (tests/engine/test_growth.py checks both).

Layers (both methods): new layers are fresh blocks whose ``o_proj``/``down_proj`` are zero (exact
identities), interleaved evenly: old layer ``i`` is followed by
``floor((i+1)*n/L) - floor(i*n/L)`` new ones (``n`` new, ``L`` old) -- one after every old layer
for 2->4, one after every third for 12->16 -- keeping the trained layers' order and spacing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tritter.daemon.engine.model import DecoderLayer, LlamaForCausalLM, init_weights
from tritter.recipe.presets import ModelShape

METHODS = ("zero", "clone")
# Symmetry-breaking noise on cloned weights, relative to each weight's std (exact either way).
CLONE_NOISE = 0.1


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


def _zero_pad_width(model: LlamaForCausalLM, grown: LlamaForCausalLM, mapping: list[int]) -> None:
    """Copy ``model`` into its layers' slots (``mapping``) of ``grown``, new widths zero-padded."""
    src, target = model.shape, grown.shape
    c = math.sqrt(target.hidden_size / src.hidden_size)
    d = src.hidden_size
    emb = grown.model.embed_tokens.weight
    emb[:, :d] = model.model.embed_tokens.weight * c
    emb[:, d:] = 0
    for i, j in enumerate(mapping):
        _grow_layer(model.model.layers[i], grown.model.layers[j], c)
    if target.tie_word_embeddings:
        _grow_norm(model.model.norm.weight, grown.model.norm.weight, 1 / c**2)
    else:
        _grow_norm(model.model.norm.weight, grown.model.norm.weight, 1 / c)
        _grow_reader(model.lm_head.weight, grown.lm_head.weight)


# --- Cloning (HyperCloning / Net2Net): every new unit is a copy of an old one ---------------------


def unit_map(old: int, new: int) -> Tensor:
    """Old unit that each of ``new`` units copies: round-robin, so copies are spread evenly."""
    return torch.arange(new) % old


def _expand_heads(head_map: Tensor, head_dim: int) -> Tensor:
    """A head map as a row map over the ``heads * head_dim`` projection rows."""
    return (head_map[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _zero_sum_noise(shape: tuple[int, int], groups: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """N(0, std) noise whose entries sum to zero over each group of columns (``groups[col]`` = group).

    Cloned units share their old unit's weight split ``1/n`` ways; adding this noise keeps the split
    exact (the copies see identical inputs / feed identical outputs, so only the group sums matter)
    while giving the copies different weights, so they get different gradients and can diverge.
    """
    noise = torch.randn(shape, generator=generator) * std  # drawn on CPU: the generator is a CPU one
    count = torch.bincount(groups).to(noise.dtype)
    mean = torch.zeros(shape[0], len(count)).index_add_(1, groups, noise) / count
    return noise - mean[:, groups]


def _clone_matrix(
    old: Tensor, new: Tensor, row_map: Tensor, col_map: Tensor, noise: float, generator: torch.Generator
) -> None:
    """``new[r, c] = old[row_map[r], col_map[c]] / n(col) + zero-sum noise``, n = copies of that column.

    Rows are plain copies (a copied output unit); columns read copied inputs, so their weights are
    split between the copies.
    """
    rows, cols = row_map.to(old.device), col_map.to(old.device)
    count = torch.bincount(cols).to(old.dtype)
    base = old[rows][:, cols] / count[cols]
    if noise > 0 and count.max() > 1:
        std = noise * float(old.std())
        base += _zero_sum_noise((new.shape[0], new.shape[1]), col_map, std, generator).to(old.device)
    new.copy_(base)


def _clone_width(
    model: LlamaForCausalLM, grown: LlamaForCausalLM, mapping: list[int], noise: float, generator: torch.Generator
) -> None:
    """Copy ``model`` into its layers' slots (``mapping``) of ``grown``, every width grown by cloning."""
    src, dst = model.shape, grown.shape
    k = dst.hidden_size // src.hidden_size
    resid = unit_map(src.hidden_size, dst.hidden_size)  # residual dim j of the new model = old dim j % d
    heads = _expand_heads(unit_map(src.num_heads, dst.num_heads), src.head_dim)
    ffn = unit_map(src.intermediate_size, dst.intermediate_size)

    def clone(old: Tensor, new: Tensor, rows: Tensor, cols: Tensor) -> None:
        _clone_matrix(old.float(), new, rows, cols, noise, generator)  # fp32 maths, cast on copy

    # The residual stream becomes k copies of the old one: mean squares, hence RMSNorm outputs, are
    # unchanged (eps included), so norm weights are plain copies.
    grown.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[:, resid])
    for i, j in enumerate(mapping):
        o, n = model.model.layers[i], grown.model.layers[j]
        for name in ("q_proj", "k_proj", "v_proj"):
            clone(getattr(o.self_attn, name).weight, getattr(n.self_attn, name).weight, heads, resid)
        clone(o.self_attn.o_proj.weight, n.self_attn.o_proj.weight, resid, heads)
        clone(o.mlp.gate_proj.weight, n.mlp.gate_proj.weight, ffn, resid)
        clone(o.mlp.up_proj.weight, n.mlp.up_proj.weight, ffn, resid)
        clone(o.mlp.down_proj.weight, n.mlp.down_proj.weight, resid, ffn)
        n.input_layernorm.weight.copy_(o.input_layernorm.weight[resid])
        n.post_attention_layernorm.weight.copy_(o.post_attention_layernorm.weight[resid])
    # The output layer reads k copies of the final hidden state: with tied embeddings (the copied
    # embedding, not split) the final norm takes the 1/k instead.
    final = model.model.norm.weight[resid]
    if dst.tie_word_embeddings:
        final = final / k
    else:
        clone(model.lm_head.weight, grown.lm_head.weight, torch.arange(dst.vocab_size), resid)
    grown.model.norm.weight.copy_(final)


@torch.no_grad()
def grow(
    model: LlamaForCausalLM,
    target: ModelShape,
    generator: torch.Generator,
    method: str = "zero",
    clone_noise: float = CLONE_NOISE,
) -> LlamaForCausalLM:
    """Return a new ``target``-shaped model computing the same function as ``model``.

    ``method``: ``"zero"`` or ``"clone"`` (needs an integer hidden-size ratio). ``clone_noise`` is
    the symmetry-breaking noise of cloned weights, relative to each weight's std. The new model
    lives on the same device/dtype and has the same train/eval mode; ``generator`` seeds the fresh
    weights. Gradient checkpointing is left off.
    """
    src = model.shape
    _check_growable(src, target)
    if method not in METHODS:
        raise ValueError(f"unknown growth method {method!r} (one of {', '.join(METHODS)})")
    if method == "clone" and target.hidden_size % src.hidden_size:
        raise ValueError(
            f"cannot clone: hidden size {src.hidden_size} -> {target.hidden_size} is not an integer multiple"
        )
    ref = next(model.parameters())
    with torch.device(ref.device):
        grown = LlamaForCausalLM(target)
    grown.to(ref.dtype)
    init_weights(grown, generator)  # every piece not overwritten below stays fresh

    mapping = layer_mapping(src.num_layers, target.num_layers)
    for j, layer in enumerate(grown.model.layers):
        if j not in mapping:  # fresh identity block
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    if method == "clone":
        _clone_width(model, grown, mapping, clone_noise, generator)
    else:
        _zero_pad_width(model, grown, mapping)
    grown.train(model.training)
    return grown
