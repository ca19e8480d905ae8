"""Files the daemon keeps in each run folder for readers without a daemon (run.json)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from tritter.protocol.state import RunState

_encoder = msgspec.json.Encoder()


def atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


def write_run_json(run_dir: Path, state: RunState) -> None:
    # Not fsynced: run.json is a view of the log, rewritten from it on every daemon start.
    atomic_write(run_dir / "run.json", msgspec.json.format(_encoder.encode(state), indent=2) + b"\n")
