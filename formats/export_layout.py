"""The Hugging Face export folder of a stage: where it lives and when it is complete.

``RUN_DIR/export/<preset>/`` holds a model folder that ``transformers`` loads.  It is written by
the trainer (``daemon/engine/export.py``, atomically: the folder appears whole or not at all)
and read by the uploader (``clients/upload.py``); both use this one definition.
"""

from __future__ import annotations

from pathlib import Path

EXPORT_DIR = "export"
EXPORT_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "README.md",
)


def export_relpath(preset_name: str) -> str:
    """The export folder of stage ``preset_name``, relative to its run folder (``export/<preset>``)."""
    return f"{EXPORT_DIR}/{preset_name}"


def export_dir(run_dir: Path, preset_name: str) -> Path:
    """``RUN_DIR/export/<preset_name>``: the absolute export folder of one stage."""
    return Path(run_dir) / EXPORT_DIR / preset_name


def export_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every file in ``EXPORT_FILES`` (the uploader pushes only complete exports)."""
    return folder.is_dir() and all((folder / name).is_file() for name in EXPORT_FILES)
