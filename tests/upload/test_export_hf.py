"""The exported stage folder loads in transformers and behaves exactly like tritter's own model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers  # a declared test dependency: missing means a broken install, not a skip
from safetensors import safe_open

from tritter.daemon.engine.data import load_tokenizer
from tritter.daemon.engine.export import StageCard, export_stage
from tritter.formats.export_layout import EXPORT_FILES as FILES, export_is_complete
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.recipe.presets import get_preset


def _model(preset: str = "tiny", seed: int = 3) -> LlamaForCausalLM:
    model = LlamaForCausalLM(get_preset(preset).shape)
    init_weights(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-trivial norms, so a dropped/mismatched norm would show
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return model.eval()


def _card(stage: str = "tiny") -> StageCard:
    return StageCard(
        run_id="20260101-000000-abcd", run_name="demo", stage=stage, index=0, step=200, stage_steps=200,
        tokens=409600, eval_loss=5.4321, eval_loss_start=9.01, lineage=("tiny",), corpus="embedded corpus",
    )


def test_export_loads_in_transformers_with_equal_logits(tmp_path: Path) -> None:
    model = _model()
    folder = export_stage(model, "tiny", tmp_path, _card())
    assert folder == tmp_path / "export" / "tiny"
    assert export_is_complete(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no temp leftovers inside

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
        assert "lm_head.weight" not in keys  # tied: transformers re-ties it from embed_tokens
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, model.shape.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ref = load_tokenizer()
    for text in ["Once upon a time, there was a tiny model.", "  spaces\n\nand lines\t", "ünïcödé — 123 <|endoftext|>"]:
        assert tok(text)["input_ids"] == ref.encode(text).ids
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1


def test_model_card_and_configs(tmp_path: Path) -> None:
    folder = export_stage(_model(), "tiny", tmp_path, _card())
    readme = (folder / "README.md").read_text()
    front = readme.split("---\n")[1]
    for needle in ("license: mit", "- tritter", "- llama", "- progressive-growth", "pipeline_tag: text-generation", "language:"):
        assert needle in front
    for needle in ("5.4321", "9.0100", "409,600", "embedded corpus", "tiny"):
        assert needle in readme
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 0 and gen["pad_token_id"] == 1
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True


def test_reexport_replaces_atomically(tmp_path: Path) -> None:
    first = export_stage(_model(seed=1), "tiny", tmp_path, _card())
    before = (first / "model.safetensors").read_bytes()
    second = export_stage(_model(seed=2), "tiny", tmp_path, _card())
    assert second == first and (second / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["tiny"]  # no temp or old folders left


def test_grown_stage_exports(tmp_path: Path) -> None:
    model = _model("small")
    folder = export_stage(model, "small", tmp_path, _card("small"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 8192, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
