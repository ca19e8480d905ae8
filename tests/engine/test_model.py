"""Model: transformers compatibility, grad checkpointing, init, parameter counts, presets."""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # a declared test dependency: missing means a broken install, not a skip
from safetensors.torch import save_file

from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, hf_config, init_weights
from tritter.recipe.presets import PRESET_NAMES, ModelShape, get_preset, stage_names

# Computed once by count_parameters and checked against the closed form below; docs/presets.md lists them.
EXPECTED_PARAMS = {
    "tiny": 1_450_624,
    "small": 5_310_720,
    "100m": 98_323_200,
    "500m": 503_367_168,
    "1b": 1_044_465_664,
}


def make_model(name: str = "tiny", seed: int = 0) -> LlamaForCausalLM:
    model = LlamaForCausalLM(get_preset(name).shape)
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def hf_model(shape: ModelShape):
    config = transformers.LlamaConfig(**hf_config(shape))
    return transformers.LlamaForCausalLM(config).eval()


def test_matches_transformers_llama() -> None:
    shape = get_preset("tiny").shape
    ours = make_model().eval()
    theirs = hf_model(shape)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # same keys, same order
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert theirs.lm_head.weight is theirs.model.embed_tokens.weight

    ids = torch.randint(0, shape.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        our_logits = ours(ids)
        out = theirs(ids, labels=ids)
        our_loss = ours(ids[:, :-1], labels=ids[:, 1:])  # HF shifts internally
    torch.testing.assert_close(our_logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(our_loss, out.loss, atol=1e-5, rtol=0)


def test_hf_from_pretrained_directory(tmp_path) -> None:
    """config.json + model.safetensors (tied lm_head dropped) is a valid HF model directory."""
    shape = get_preset("tiny").shape
    ours = make_model(seed=3).eval()
    (tmp_path / "config.json").write_text(json.dumps(hf_config(shape)))
    state = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, shape.vocab_size, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("every", [1, 2])
def test_grad_checkpointing_identical(every: int) -> None:
    ids = torch.randint(0, 8192, (2, 33), generator=torch.Generator().manual_seed(2))
    results = []
    for ckpt in (0, every):
        model = make_model(seed=5)
        model.set_grad_checkpointing(ckpt)
        loss = model(ids[:, :-1], labels=ids[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_grad_checkpointing_rejects_negative() -> None:
    with pytest.raises(ValueError):
        make_model().set_grad_checkpointing(-1)


def test_init_is_seeded_and_draws_no_global_rng() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = make_model(seed=1), make_model(seed=1), make_model(seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    states = (a.state_dict(), b.state_dict(), c.state_dict())
    for (name, pa), pb, pc in zip(states[0].items(), states[1].values(), states[2].values(), strict=True):
        assert torch.equal(pa, pb), name
        if not name.endswith("layernorm.weight") and name != "model.norm.weight":
            assert not torch.equal(pa, pc), name
    std = a.model.layers[0].self_attn.q_proj.weight.std().item()
    assert 0.018 < std < 0.022


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_parameter_counts(name: str) -> None:
    shape = get_preset(name).shape
    with torch.device("meta"):  # no memory for the big ones
        model = LlamaForCausalLM(shape)
    h, f, n = shape.hidden_size, shape.intermediate_size, shape.num_layers
    closed_form = shape.vocab_size * h + n * (4 * h * h + 3 * h * f + 2 * h) + h
    assert count_parameters(model) == closed_form == EXPECTED_PARAMS[name]
    assert shape.head_dim == 64


def test_untied_model_has_separate_head() -> None:
    shape = ModelShape(hidden_size=128, num_layers=1, num_heads=2, intermediate_size=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(shape)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    per_layer = 4 * 128 * 128 + 3 * 128 * 256 + 2 * 128
    assert count_parameters(model) == 2 * shape.vocab_size * 128 + per_layer + 128


def test_presets_api() -> None:
    assert stage_names("tiny", "1b") == list(PRESET_NAMES)
    assert stage_names("small", "small") == ["small"]
    with pytest.raises(ValueError, match="bigger"):
        stage_names("100m", "small")
    with pytest.raises(ValueError, match=r"unknown preset 'x' \(choose from tiny, small, 100m, 500m, 1b\)"):
        get_preset("x")
    for name in PRESET_NAMES:
        preset = get_preset(name)
        assert preset.name == name and preset.shape.vocab_size == 8192 and preset.shape.tie_word_embeddings
