"""Export a finished stage as a Hugging Face model folder: ``RUN_DIR/export/<preset>/``.

The folder is what ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load, and what ``tritter-upload`` pushes to the hub:

- ``config.json``               LlamaConfig (``hf_config`` of the stage's shape), fp32
- ``model.safetensors``         weights only, fp32, ``{"format": "pt"}`` metadata; with tied
                                embeddings ``lm_head.weight`` is left out, as transformers saves it
- ``tokenizer.json``            the run's tokenizer (byte-level BPE, 8192 tokens)
- ``tokenizer_config.json``     PreTrainedTokenizerFast, bos/eos ``<|endoftext|>``, pad ``<|pad|>``
- ``special_tokens_map.json``
- ``generation_config.json``
- ``README.md``                 model card: YAML front matter + the stage's metrics

It is written atomically: built in a temporary sibling folder, every file fsynced, then
renamed over the old folder, so a reader (or the uploader) sees the old export or the new
one, never a half-written one.  Exporting the same stage again replaces it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tritter.daemon.engine.data import EOT, PAD
from tritter.daemon.engine.model import count_parameters, hf_config
from tritter.recipe.presets import get_preset
from tritter.formats.export_layout import export_dir
from tritter.formats.files import fsync_dir

@dataclass(frozen=True, kw_only=True)
class StageCard:
    """What the model card says about a stage (all plain values; nothing here is required but the names)."""

    run_id: str
    run_name: str
    stage: str
    index: int = 0
    step: int = 0  # global step at the end of the stage
    stage_steps: int = 0  # optimizer steps trained in this stage
    tokens: int = 0  # tokens trained on in this stage
    eval_loss: float | None = None  # held-out loss at the end of the stage
    eval_loss_start: float | None = None  # held-out loss right after growth, before training
    lineage: tuple[str, ...] = ()  # stages this model grew through, oldest first, ending with `stage`
    corpus: str = "embedded corpus"
    seed: int = 0
    hybrid: bool = True
    license: str = "mit"
    language: tuple[str, ...] = ("en",)
    datasets: tuple[str, ...] = field(default=())


def _tokenizer_json() -> bytes:
    return (resources.files("tritter.daemon") / "assets" / "tokenizer.json").read_bytes()


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU weights under transformers' keys; a tied lm_head is dropped (transformers re-ties it)."""
    state = model.state_dict()
    tied = bool(getattr(getattr(model, "shape", None), "tie_word_embeddings", False))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue
        out[key] = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_card(card: StageCard, params: int, config: dict) -> str:
    lineage = " → ".join(card.lineage or (card.stage,))
    front = [
        "---",
        f"license: {card.license}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- tritter",
        "- llama",
        "- progressive-growth",
        "language:",
        *(f"- {lang}" for lang in card.language),
    ]
    if card.datasets:
        front += ["datasets:", *(f"- {d}" for d in card.datasets)]
    front.append("---")
    body = f"""
# {card.run_name} — stage `{card.stage}`

A small Llama-architecture causal language model trained by
[tritter](https://github.com/) with progressive growth: training starts with a small model
that is grown (function-preservingly) into the next preset when a stage ends.
This is the model at the end of stage **{card.stage}** (stage {card.index + 1} of the run).

| | |
|---|---|
| run | `{card.run_id}` ({card.run_name}) |
| stage | `{card.stage}` |
| parameters | {params:,} |
| layers × hidden × heads | {config['num_hidden_layers']} × {config['hidden_size']} × {config['num_attention_heads']} |
| vocabulary | {config['vocab_size']:,} (byte-level BPE) |
| context length | {config['max_position_embeddings']} |
| steps in this stage | {card.stage_steps:,} |
| global step | {card.step:,} |
| tokens in this stage | {card.tokens:,} |
| held-out eval loss (end of stage) | {_fmt(card.eval_loss)} |
| held-out eval loss (start of stage, right after growth) | {_fmt(card.eval_loss_start)} |
| growth lineage | {lineage} |
| corpus | {card.corpus} |
| seed | {card.seed} |
| training | {'hybrid (warmup / full / predict / correct)' if card.hybrid else 'full steps only'} |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO", revision="{card.stage}")
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO", revision="{card.stage}")
ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=True)[0]))
```

This is a research artefact from a short run: expect it to be small and not very good.
"""
    return "\n".join(front) + "\n" + body


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def export_stage(model: nn.Module, preset_name: str, run_dir: Path, card: StageCard) -> Path:
    """Write ``run_dir/export/<preset_name>/`` (atomically) and return that folder's path."""
    shape = get_preset(preset_name).shape
    config = hf_config(shape)
    params = count_parameters(model)
    target = export_dir(run_dir, preset_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset_name}.", suffix=".tmp", dir=target.parent))
    try:
        _write(tmp / "config.json", _json(config))
        save_file(_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        with open(tmp / "model.safetensors", "rb") as f:
            os.fsync(f.fileno())
        _write(tmp / "tokenizer.json", _tokenizer_json())
        _write(
            tmp / "tokenizer_config.json",
            _json(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "bos_token": EOT,
                    "eos_token": EOT,
                    "pad_token": PAD,
                    "unk_token": None,
                    "add_bos_token": False,
                    "add_eos_token": False,
                    "clean_up_tokenization_spaces": False,
                    "model_max_length": shape.max_position_embeddings,
                }
            ),
        )
        _write(tmp / "special_tokens_map.json", _json({"bos_token": EOT, "eos_token": EOT, "pad_token": PAD}))
        _write(
            tmp / "generation_config.json",
            _json(
                {
                    "bos_token_id": config["bos_token_id"],
                    "eos_token_id": config["eos_token_id"],
                    "pad_token_id": config["pad_token_id"],
                    "do_sample": True,
                    "temperature": 0.8,
                    "top_p": 0.95,
                    "max_length": shape.max_position_embeddings,
                }
            ),
        )
        _write(tmp / "README.md", model_card(card, params, config).encode())
        fsync_dir(tmp)
        old = None
        if target.exists():  # rename() cannot replace a non-empty folder: move it aside first
            old = target.parent / f".{preset_name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
