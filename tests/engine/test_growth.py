"""Growth: the grown model computes the same function and all of it can learn."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tritter.daemon.engine.growth import grow, layer_mapping
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.recipe.presets import ModelShape, get_preset


def markov_batch(gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    """Tokens from a fixed sparse Markov chain over 256 ids: learnable in a few dozen steps."""
    table = torch.randint(0, 256, (256, 4), generator=torch.Generator().manual_seed(123))
    tokens = torch.empty(batch, seq, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, 256, (batch,), generator=gen)
    for t in range(1, seq):
        choice = torch.randint(0, 4, (batch,), generator=gen)
        tokens[:, t] = table[tokens[:, t - 1], choice]
    return tokens


def loss_of(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(ids[:, :-1], labels=ids[:, 1:])


@pytest.fixture(scope="module")
def trained_tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        loss = loss_of(model, markov_batch(gen, 8, 33))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 6.5  # it learned something (ln 8192 = 9.0)
    return model.eval()


def eval_ids() -> torch.Tensor:
    return markov_batch(torch.Generator().manual_seed(99), 4, 33)


def assert_same_logits(old: LlamaForCausalLM, new: LlamaForCausalLM, ids: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = old(ids), new(ids)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert rel < 1e-5, rel
    return rel


def test_layer_mapping_interleaves() -> None:
    assert layer_mapping(2, 4) == [0, 2]
    assert layer_mapping(4, 12) == [0, 3, 6, 9]
    assert layer_mapping(12, 16) == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]
    assert layer_mapping(3, 3) == [0, 1, 2]


@pytest.mark.parametrize("method", ["clone", "zero"])
def test_tiny_to_small_preserves_logits_and_loss(trained_tiny: LlamaForCausalLM, method: str) -> None:
    small = grow(trained_tiny, get_preset("small").shape, torch.Generator().manual_seed(7), method)
    assert small.shape == get_preset("small").shape and not small.training
    ids = eval_ids()
    assert_same_logits(trained_tiny, small, ids)
    with torch.no_grad():
        before, after = loss_of(trained_tiny, ids).item(), loss_of(small, ids).item()
    assert abs(after - before) / before < 1e-3, (before, after)


@pytest.mark.parametrize("method", ["clone", "zero"])
def test_small_to_100m_preserves_logits(trained_tiny: LlamaForCausalLM, method: str) -> None:
    gen = torch.Generator().manual_seed(8)
    small = grow(trained_tiny, get_preset("small").shape, gen, method)
    big = grow(small, get_preset("100m").shape, gen, method)  # 3x hidden, 4 -> 12 layers, 704 -> 2304 FFN
    ids = eval_ids()[:2]
    assert_same_logits(small, big, ids)
    assert_same_logits(trained_tiny, big, ids)


def test_growth_is_seeded(trained_tiny: LlamaForCausalLM) -> None:
    target = get_preset("small").shape
    a = grow(trained_tiny, target, torch.Generator().manual_seed(3))
    b = grow(trained_tiny, target, torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_cloning_needs_an_integer_width_ratio_and_zero_padding_does_not() -> None:
    src = ModelShape(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=352)
    odd = ModelShape(hidden_size=192, num_layers=3, num_heads=3, intermediate_size=512)  # 1.5x; 500m -> 1b is 4/3x
    model = LlamaForCausalLM(src)
    init_weights(model, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="not an integer multiple"):
        grow(model, odd, torch.Generator(), "clone")
    with pytest.raises(ValueError, match="unknown growth method"):
        grow(model, odd, torch.Generator(), "auto")
    ids = eval_ids()[:2]
    assert_same_logits(model, grow(model, odd, torch.Generator().manual_seed(5)), ids)


def _clone_gap(model: LlamaForCausalLM, d: int) -> float:
    """How far the two copies of the old residual dims have drifted apart in layer 0's q_proj."""
    w = model.model.layers[0].self_attn.q_proj.weight
    return (w[:, :d] - w[:, d : 2 * d]).abs().max().item()


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_cloning_noise_is_what_lets_copies_diverge(trained_tiny: LlamaForCausalLM, noise: float) -> None:
    d = trained_tiny.shape.hidden_size
    small = grow(trained_tiny, get_preset("small").shape, torch.Generator().manual_seed(9), "clone", noise).train()
    assert_same_logits(trained_tiny, small, eval_ids())
    gap = _clone_gap(small, d)
    assert (gap > 0) == (noise > 0)  # without noise the copies start identical...
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(10)
    grads = []
    for _ in range(2):
        loss_of(small, markov_batch(gen, 4, 33)).backward()
        g = small.model.layers[0].self_attn.q_proj.weight.grad
        grads.append((g[:, :d] - g[:, d : 2 * d]).abs().max().item())
        opt.step()
        opt.zero_grad()
    if noise:  # ...get different gradients (from step 2: step 1 moves the residual copies apart) and drift
        assert grads[1] > 0 and _clone_gap(small, d) != gap
    else:  # ...and with no noise they would stay copies forever (the symmetry never breaks)
        assert grads == [0.0, 0.0] and _clone_gap(small, d) == 0.0


def test_rejects_shrinking_and_mismatched_shapes(trained_tiny: LlamaForCausalLM) -> None:
    small = grow(trained_tiny, get_preset("small").shape, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot grow"):
        grow(small, get_preset("tiny").shape, torch.Generator())
    odd = ModelShape(hidden_size=256, num_layers=4, num_heads=2, intermediate_size=704)
    with pytest.raises(ValueError, match="head_dim"):
        grow(trained_tiny, odd, torch.Generator())


def _zero_blocks(model: LlamaForCausalLM, old: ModelShape, of: Callable[[torch.Tensor], torch.Tensor]):
    """(label, slice) for every block growth set to zero; ``of`` picks the weight or its grad."""
    d = old.hidden_size
    mapping = layer_mapping(old.num_layers, model.shape.num_layers)
    yield "embed new dims", of(model.model.embed_tokens.weight)[:, d:]
    for j, layer in enumerate(model.model.layers):
        o, down = of(layer.self_attn.o_proj.weight), of(layer.mlp.down_proj.weight)
        if j in mapping:
            yield f"layer {j} o_proj new-head cols", o[:d, old.num_heads * old.head_dim :]
            yield f"layer {j} down_proj new-unit cols", down[:d, old.intermediate_size :]
        else:
            yield f"layer {j} o_proj (new layer)", o[:d]
            yield f"layer {j} down_proj (new layer)", down[:d]
        yield f"layer {j} o_proj new-dim rows", o[d:]
        yield f"layer {j} down_proj new-dim rows", down[d:]


def test_zero_padded_parts_get_gradients(trained_tiny: LlamaForCausalLM) -> None:
    old = trained_tiny.shape
    small = grow(trained_tiny, get_preset("small").shape, torch.Generator().manual_seed(11), "zero").train()
    for label, block in _zero_blocks(small, old, lambda p: p.detach()):
        assert block.abs().sum() == 0, label  # sanity: these really start at zero

    gen = torch.Generator().manual_seed(12)
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    loss_of(small, markov_batch(gen, 4, 33)).backward()
    # Tied embeddings: the logits see new residual dims only through the (still zero) new embedding
    # columns, and fresh blocks' zero writers hide their readers; so new-dim writes from the last old
    # block's MLP onward get no gradient on step 1 (for tiny->small: layers 2 and 3) -- only on step 2.
    last_old = layer_mapping(old.num_layers, small.shape.num_layers)[-1]
    late = {f"layer {j} down_proj new-dim rows" for j in range(last_old, small.shape.num_layers)}
    late |= {f"layer {j} o_proj new-dim rows" for j in range(last_old + 1, small.shape.num_layers)}
    for label, grad in _zero_blocks(small, old, lambda p: p.grad):
        assert (grad.abs().sum() > 0) == (label not in late), label

    opt.step()
    opt.zero_grad()
    loss_of(small, markov_batch(gen, 4, 33)).backward()
    for label, grad in _zero_blocks(small, old, lambda p: p.grad):
        assert grad.abs().sum() > 0, f"{label} (second step)"


def test_grown_model_keeps_training(trained_tiny: LlamaForCausalLM) -> None:
    small = grow(trained_tiny, get_preset("small").shape, torch.Generator().manual_seed(13)).train()
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ids = eval_ids()
    with torch.no_grad():
        start = loss_of(small, ids).item()
    gen = torch.Generator().manual_seed(14)
    for _ in range(6):
        loss_of(small, markov_batch(gen, 8, 33)).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert loss_of(small, ids).item() < start
