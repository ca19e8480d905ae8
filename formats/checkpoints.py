"""Checkpoint file names and listing: one definition for the trainer, the compressor and ``tritter-ckpt``.

A run's checkpoints live in ``RUN_DIR/checkpoints/`` as ``step-XXXXXXXX.safetensors`` (written by
the trainer, ``daemon/engine/checkpoint.py``) and, once the compressor sink has replaced them,
``step-XXXXXXXX.safetensors.tzst`` (``formats/codec.py``).  Temp files (``*.tmp``) are never
checkpoints.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
RAW_SUFFIX = ".safetensors"
SUFFIX = ".tzst"  # appended to the original name: step-00000050.safetensors.tzst
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors(\.tzst)?$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """``RUN_DIR/checkpoints/step-XXXXXXXX.safetensors`` for global optimizer step ``step`` (>= 0)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}{RAW_SUFFIX}"


def is_compressed(path: Path | str) -> bool:
    """True for a compressed checkpoint name (``*.safetensors.tzst``)."""
    return Path(path).name.endswith(RAW_SUFFIX + SUFFIX)


def is_checkpoint_file(path: Path) -> bool:
    """True for a checkpoint file ``read_safetensors_bytes`` reads: ``*.safetensors`` or ``*.safetensors.tzst``.

    Temp files (``*.tmp``) are not checkpoint files.
    """
    name = Path(path).name
    return name.endswith(RAW_SUFFIX) or name.endswith(RAW_SUFFIX + SUFFIX)


def raw_name(path: Path | str) -> str:
    """``step-00000050.safetensors`` for either form of the name."""
    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(RAW_SUFFIX + SUFFIX) else name


def checkpoint_step(path: Path | str) -> int | None:
    """The global step in a checkpoint file name, None for any other name."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoint_files(run_dir: Path) -> list[Path]:
    """A run's checkpoints oldest step first, one file per step: the raw file if present, else the .tzst."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for p in ckpt_dir.iterdir():
        step = checkpoint_step(p)
        if step is None or not p.is_file():
            continue
        if step not in by_step or not p.name.endswith(SUFFIX):
            by_step[step] = p
    return [by_step[s] for s in sorted(by_step)]
