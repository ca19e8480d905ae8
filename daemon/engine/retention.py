"""Checkpoint retention (``--keep-checkpoints N``): which of a run's checkpoints to delete, and when.

Kept after every durable checkpoint write (docs/eventlog.md, "Checkpoint events and retention"):

* the latest ``N`` checkpoints (default 3) — the newest is the one resume would use;
* each stage's last checkpoint (a completed stage's final one: its grown successor restarts
  from it, and ``extend`` needs the last);
* the checkpoint with the best held-out eval loss (an ``eval`` event at its step, or the
  stage-end eval);
* every file a kept compressed delta needs to decode (``formats/codec.py`` ``base_chain``), and,
  for a kept checkpoint the compressor sink has not compressed yet, the checkpoint before it
  (the compressor may be writing it as a delta of that one right now).

Only checkpoints this run recorded are candidates: an unknown file (another build's, a damaged
one newer than the resume point) is never deleted.  Deletion runs only after the newer checkpoint's
file and directory are fsynced (``save_checkpoint`` returns after that), and each deleted file is
announced by a ``checkpoint`` event with ``status="deleted"``.

The records travel in the checkpoint's trainer state (``Progress.extra["checkpoints"]``), so a
resumed run keeps pruning the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tritter.formats.checkpoints import CHECKPOINT_DIR, checkpoint_step, is_compressed
from tritter.formats.codec import CodecError, base_chain
from tritter.formats.files import fsync_dir

log = logging.getLogger("tritter.retention")

DEFAULT_KEEP = 3


@dataclass
class Record:
    """What the trainer knows of one checkpoint it wrote: its stage, whether it closed the stage,
    its held-out eval loss (None when none was measured at its step), its size and sha256."""

    stage: str
    final: bool = False
    eval_loss: float | None = None
    bytes: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Deletion:
    """A file retention removed: its path, global step, size in bytes, and the record it had."""

    path: Path
    step: int
    bytes: int
    record: Record


def load_records(raw: object) -> dict[int, Record]:
    """Records from ``Progress.extra["checkpoints"]`` (JSON: step -> Record fields); {} for anything else."""
    if not isinstance(raw, dict):
        return {}
    out: dict[int, Record] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            known = {k: v for k, v in value.items() if k in Record.__dataclass_fields__}
            out[int(key)] = Record(**known)
    return out


def dump_records(records: dict[int, Record]) -> dict[str, dict[str, Any]]:
    """The JSON form of ``records`` for the checkpoint's trainer state."""
    return {str(step): asdict(record) for step, record in sorted(records.items())}


def _files_by_step(run_dir: Path) -> dict[int, list[Path]]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    out: dict[int, list[Path]] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            step = checkpoint_step(path)
            if step is not None and path.is_file():
                out.setdefault(step, []).append(path)
    return out


def kept_steps(records: dict[int, Record], present: list[int], keep_last: int) -> set[int]:
    """The recorded steps retention keeps, before delta chains: the latest ``keep_last`` of
    ``present`` (steps with a file), each stage's last, and the best eval loss."""
    recorded = sorted(s for s in present if s in records)
    keep = set(recorded[-keep_last:])
    last_of_stage: dict[str, int] = {}
    for step in recorded:
        last_of_stage[records[step].stage] = step
    keep.update(last_of_stage.values())
    scored = [s for s in recorded if records[s].eval_loss is not None]
    if scored:
        keep.add(min(scored, key=lambda s: (records[s].eval_loss, -s)))
    return keep


def _chain_steps(path: Path, step: int, present: list[int], chain: Callable[[Path], list[Path]]) -> list[int]:
    """Steps of the files decoding ``path`` reads; every older step when its chain cannot be read."""
    try:
        return [s for s in (checkpoint_step(p) for p in chain(path)) if s is not None]
    except (CodecError, OSError) as error:
        log.warning("retention: %s (keeping every older checkpoint)", error)
        return [s for s in present if s < step]


def prune(
    run_dir: Path,
    records: dict[int, Record],
    keep_last: int = DEFAULT_KEEP,
    chain: Callable[[Path], list[Path]] = base_chain,
) -> list[Deletion]:
    """Delete the run's recorded checkpoints that retention does not keep; return what was deleted.

    Args: ``run_dir`` the run folder; ``records`` step -> Record (deleted steps are removed from it);
    ``keep_last`` N >= 1; ``chain`` the delta-chain resolver (``formats.codec.base_chain``).
    A kept file whose delta chain cannot be read keeps every older checkpoint.  Files that vanish
    meanwhile (the compressor renames and removes) are skipped.  Raises OSError when a file cannot
    be removed (the trainer logs it and carries on).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    files = _files_by_step(run_dir)
    present = sorted(files)
    for step in [s for s in records if s not in files]:  # gone already (an older resume point's records)
        del records[step]
    keep = kept_steps(records, present, keep_last)
    keep.update(s for s in present if s not in records)  # unknown files are never ours to delete
    # What the kept files need.  A compressed delta needs its whole base chain.  A file still raw
    # may be compressed any moment as a delta of the checkpoint before it (the compressor does so
    # within a stage, never for a stage's final one), so that one stays, with its own chain.
    bases: set[int] = set()
    for step in sorted(keep):
        for path in files.get(step, []):
            if is_compressed(path):
                bases.update(_chain_steps(path, step, present, chain))
            elif step in records and not records[step].final:
                before = [s for s in present if s < step][-1:]
                if before and before[0] in records and records[before[0]].stage == records[step].stage:
                    bases.add(before[0])
                    for base_path in files[before[0]]:
                        if is_compressed(base_path):
                            bases.update(_chain_steps(base_path, before[0], present, chain))
    keep |= bases
    deleted: list[Deletion] = []
    for step in present:
        if step in keep:
            continue
        for path in files[step]:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            deleted.append(Deletion(path=path, step=step, bytes=size, record=records[step]))
        records.pop(step, None)
    if deleted:
        fsync_dir(Path(run_dir) / CHECKPOINT_DIR)
    return deleted
