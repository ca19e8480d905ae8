#!/usr/bin/env python
"""Checkpoint saves that don't stall training: save time and training-loop stall, side by side.

For one preset's full training state on CPU (weights + AdamW moments after one step, plus RNG),
each round measures, in this order and on the same tensors:

* ``save_file_s`` — ``safetensors.torch.save_file`` of the snapshot's tensors (no fsync, no
  hashing: the library's own speed, the reference the issue names);
* ``save_file_fsync_s`` — the same plus an fsync: the durable reference (a checkpoint that a
  power loss can take is not one resume may trust);
* ``save_s`` — tritter's whole save: ``snapshot_checkpoint`` (host copy) + ``write_snapshot``
  (one streaming pass: XXH3 content digest, SHA-256 of the file while writing, fsync, rename);
* ``stall_s`` — what the training loop waits for with background saving: the snapshot alone
  (``BackgroundWriter`` writes the file on its own thread);
* ``legacy_s`` — the save before this change: SHA-256 content digest, ``save_file``, fsync, then
  the file read back and hashed;
* ``sha256_s`` — hashlib's SHA-256 over the same bytes, alone: the floor of any save whose
  ``checkpoint`` event must carry the file's SHA-256 (docs/interface: ``sha256``).

Every timed operation starts after ``os.sync()`` and a short pause, so none pays for the
previous one's dirty pages (without it, ``save_file`` alone measured slower than ``save_file``
+ fsync in the same run).

Ratios (medians over ``--rounds``): ``save_ratio`` = save ÷ save_file (target ≤ 1.2) and
``stall_ratio`` = stall ÷ save (target ≤ 0.2); ``durable_ratio`` = save ÷ save_file_fsync;
``legacy_ratio`` = legacy ÷ save_file; ``sha256_floor_ratio`` = sha256 ÷ save_file (no save
that hashes the file can have a ``save_ratio`` below it).

    .venv/bin/python bench/checkpoint_save.py --quick --json     # small preset, 5 rounds
    .venv/bin/python bench/checkpoint_save.py --json             # 100m preset (~1.2 GB), 5 rounds

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tritter.daemon.engine.checkpoint import HostBuffers, snapshot_checkpoint, write_snapshot
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.daemon.engine.trainer import make_optimizer
from tritter.formats.files import file_sha256
from tritter.recipe.presets import get_preset


def log(msg: str) -> None:
    print(f"[checkpoint_save] {msg}", file=sys.stderr, flush=True)


def _state(preset_name: str) -> tuple[LlamaForCausalLM, torch.optim.Optimizer]:
    preset = get_preset(preset_name)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, torch.Generator().manual_seed(0))
    opt = make_optimizer(model, preset)
    for p in model.parameters():  # one AdamW step on small gradients creates both moments
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def _legacy_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    save_file(tensors, str(path), metadata=dict(metadata, **{"content.sha256": h.hexdigest()}))
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return file_sha256(path)


def _save_file_durable(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _timed(fn) -> float:
    os.sync()  # start clean: no writeback of the previous operation's pages lands in this one
    time.sleep(0.3)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _range(num: list[float], den: list[float]) -> list[float]:
    """[lowest, highest] of the per-round ratios num[i] / den[i] (each round side by side)."""
    ratios = [a / b for a, b in zip(num, den)]
    return [round(min(ratios), 3), round(max(ratios), 3)]


def _sha256(tensors: dict[str, torch.Tensor]) -> None:
    h = hashlib.sha256()
    for t in tensors.values():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", help="preset whose state is saved (default 100m; small with --quick)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", help="where to write (default: a temp folder on the same disk as ./)")
    parser.add_argument("--json", action="store_true", help="(the last line is JSON either way)")
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "100m")
    model, opt = _state(preset)
    folder = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir or "."))
    buffers = HostBuffers()  # as the trainer keeps them: the first snapshot allocates, later ones copy
    snapshot_checkpoint(model, opt, {"step": -1}, buffers=buffers)
    rows: dict[str, list[float]] = {"save_file_s": [], "save_file_fsync_s": [], "save_s": [], "stall_s": [], "legacy_s": [], "sha256_s": []}
    nbytes = 0
    try:
        for r in range(args.rounds):
            snapshot = snapshot_checkpoint(model, opt, {"step": r})  # private: stays intact below
            nbytes = snapshot.nbytes
            ops: list[tuple[str, Callable[[], object], str | None]] = [
                ("save_file_s", lambda: save_file(snapshot.tensors, str(folder / "ref.safetensors"), metadata=snapshot.metadata), "ref"),
                ("save_file_fsync_s", lambda: _save_file_durable(folder / "ref.safetensors", snapshot.tensors, snapshot.metadata), "ref"),
                ("stall_s", lambda: snapshot_checkpoint(model, opt, {"step": r}, buffers=buffers), None),
                ("save_s", lambda: write_snapshot(folder / "new.safetensors", snapshot_checkpoint(model, opt, {"step": r}, buffers=buffers)), "new"),
                ("legacy_s", lambda: _legacy_save(folder / "old.safetensors", snapshot.tensors, snapshot.metadata), "old"),
                ("sha256_s", lambda: _sha256(snapshot.tensors), None),
            ]
            # each round starts at another operation: the first one after a fresh 1.2 GB snapshot
            # measured slower whatever it was, which a fixed order charged to save_file every time
            for key, fn, written in ops[r % len(ops):] + ops[: r % len(ops)]:
                rows[key].append(_timed(fn))
                if written:
                    (folder / f"{written}.safetensors").unlink()
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()))
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "bench": "checkpoint_save",
        "preset": preset,
        "bytes": nbytes,
        "rounds": args.rounds,
        **{k: round(v, 4) for k, v in med.items()},
        "save_ratio": round(med["save_s"] / med["save_file_s"], 3),
        "stall_ratio": round(med["stall_s"] / med["save_s"], 3),
        "durable_ratio": round(med["save_s"] / med["save_file_fsync_s"], 3),
        "legacy_ratio": round(med["legacy_s"] / med["save_file_s"], 3),
        "sha256_floor_ratio": round(med["sha256_s"] / med["save_file_s"], 3),
        "save_ratio_range": _range(rows["save_s"], rows["save_file_s"]),
        "durable_ratio_range": _range(rows["save_s"], rows["save_file_fsync_s"]),
        "threads": torch.get_num_threads(),
    }
    log(f"{preset}, {nbytes / 1e9:.2f} GB, medians of {args.rounds}: save_file {med['save_file_s']:.2f} s, + fsync "
        f"{med['save_file_fsync_s']:.2f} s, tritter save {med['save_s']:.2f} s (stall {med['stall_s']:.2f} s), "
        f"SHA-256 alone {med['sha256_s']:.2f} s")
    log(f"stall / save {result['stall_ratio']} (target <= 0.2); save / save_file {result['save_ratio']} (target <= 1.2; "
        f"SHA-256 alone is {result['sha256_floor_ratio']}); save / (save_file + fsync) {result['durable_ratio']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
