"""Export a finished stage as a Hugging Face model folder: ``RUN_DIR/export/<preset>/``.

The folder is what ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load, and what ``tritter-upload`` pushes to the hub:

- ``config.json``               LlamaConfig (``hf_config`` of the stage's shape), fp32
- ``model.safetensors``         weights only, fp32, ``{"format": "pt"}`` metadata; with tied
                                embeddings ``lm_head.weight`` is left out, as transformers saves it
- ``tokenizer.json``            the run's tokenizer (``--tokenizer``; default: the embedded byte-level BPE, 8192 tokens)
- ``tokenizer_config.json``     PreTrainedTokenizerFast, bos/eos = its end-of-text token, pad ``<|pad|>``
                                (or eos), ``split_special_tokens`` (formats/tokenizer.py)
- ``special_tokens_map.json``
- ``generation_config.json``
- ``README.md``                 model card: YAML front matter + the stage's metrics

It is written atomically (``formats.files.atomic_dir``): built in a temporary sibling folder, every file fsynced, then
renamed over the old folder, so a reader (or the uploader) sees the old export or the new
one, never a half-written one.  Exporting the same stage again replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tritter.daemon.engine.data import embedded_tokenizer_spec
from tritter.daemon.engine.model import count_parameters, hf_config
from tritter.recipe.presets import get_preset
from tritter.formats.text import md_cell, md_inline
from tritter.formats.export_layout import export_dir
from tritter.formats.files import atomic_dir
from tritter.formats.tokenizer import TokenizerSpec, hf_tokenizer_files

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
    hf_user: str | None = None  # --hf-user: the card then shows the hub repo USER/RUN_NAME too


def _use_snippet(source: str, revision: str | None) -> str:
    """The first thing a transformers user types, runnable as is: load, generate, print.

    ``source`` is a local folder or a hub repo id; ``revision`` the hub branch (a stage).
    ``**inputs`` passes the attention mask; generation_config.json sets no ``max_length``, so
    ``max_new_tokens`` alone decides the length (no "both were set" warning).
    """
    rev = f", revision={json.dumps(revision)}" if revision else ""
    return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained({json.dumps(source, ensure_ascii=False)}{rev})
tokenizer = AutoTokenizer.from_pretrained({json.dumps(source, ensure_ascii=False)}{rev})
inputs = tokenizer("Once upon a time", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=40)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```"""


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


def model_card(card: StageCard, params: int, config: dict, folder: Path | None = None) -> str:
    """The README.md of an export: YAML front matter, a table of the stage's figures, and a
    runnable snippet for the local ``folder`` and (with ``card.hf_user``) the hub repo.

    User text (run name, corpus path) is escaped for Markdown (formats/text.py): a ``|`` in a
    name cannot add a table column, nor a newline end the row.
    """
    lineage = " → ".join(card.lineage or (card.stage,))
    name = md_cell(card.run_name)
    uses = []
    if card.hf_user:
        repo = f"{card.hf_user}/{card.run_name}"
        uses.append("From the Hugging Face Hub (`tritter-upload` pushes each stage to the branch named after it):\n\n"
                    + _use_snippet(repo, card.stage))
    if folder is not None:
        uses.append("From the folder tritter exported (on the machine that trained it):\n\n" + _use_snippet(str(folder), None))
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
# {md_inline(card.run_name)} — stage `{card.stage}`

A small Llama-architecture causal language model trained by
tritter with progressive growth: training starts with a small model
that is grown (function-preservingly) into the next preset when a stage ends.
This is the model at the end of stage **{card.stage}** (stage {card.index + 1} of the run).

| | |
|---|---|
| run | `{card.run_id}` ({name}) |
| stage | `{card.stage}` |
| parameters | {params:,} |
| layers × hidden × heads | {config['num_hidden_layers']} × {config['hidden_size']} × {config['num_attention_heads']} |
| vocabulary | {config['vocab_size']:,} (byte-level BPE) |
| context length | {config['max_position_embeddings']} |
| steps in this stage | {card.stage_steps:,} |
| global step | {card.step:,} |
| tokens in this stage | {card.tokens:,} |
| held-out eval loss (end of stage) | {_fmt(card.eval_loss)} |
| held-out eval loss (start of stage, {'right after growth' if card.index else 'at initialisation'}) | {_fmt(card.eval_loss_start)} |
| growth lineage | {lineage} |
| corpus | {md_cell(card.corpus)} |
| seed | {card.seed} |
| training | {'hybrid (warmup / full / predict / correct)' if card.hybrid else 'full steps only'} |

## Use

{chr(10).join(uses) if uses else "Load it with `AutoModelForCausalLM.from_pretrained(FOLDER)` (and `AutoTokenizer`)."}

Sampling settings (temperature 0.8, top-p 0.95) come from `generation_config.json`; pass
`do_sample=False` for greedy decoding.

This is a research artefact from a short run: expect it to be small and not very good.
"""
    return "\n".join(front) + "\n" + body


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)  # inside atomic_dir's temp folder, which fsyncs it before the swap


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def export_stage(
    model: nn.Module, preset_name: str, run_dir: Path, card: StageCard, tokenizer: TokenizerSpec | None = None
) -> Path:
    """Write ``run_dir/export/<preset_name>/`` (atomically) and return that folder's path.

    ``tokenizer``: the run's tokenizer (None: the embedded one); its files ship in the folder and
    its special ids go into config.json.  The model's own shape (its vocabulary is the run's)
    wins over the preset's.
    """
    shape = getattr(model, "shape", None) or get_preset(preset_name).shape
    spec = tokenizer or embedded_tokenizer_spec()
    config = hf_config(shape)
    config["bos_token_id"] = config["eos_token_id"] = spec.eot_id
    config["pad_token_id"] = spec.pad_id
    params = count_parameters(model)
    target = export_dir(run_dir, preset_name)
    # atomic_dir fsyncs every file, swaps the folder in whole (one writer at a time) or not at all.
    with atomic_dir(target) as tmp:
        _write(tmp / "config.json", _json(config))
        save_file(_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in hf_tokenizer_files(spec, shape.max_position_embeddings).items():
            _write(tmp / name, content)
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
                    # No max_length: with it, every generate(max_new_tokens=...) warns that both
                    # are set.  The context length is config.json's max_position_embeddings.
                }
            ),
        )
        _write(tmp / "README.md", model_card(card, params, config, folder=target).encode())
    return target
