"""Files the daemon keeps in each run folder for readers without a daemon (run.json)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tritter.formats.files import atomic_write
from tritter.protocol.state import RunState

_encoder = msgspec.json.Encoder()


def write_run_json(run_dir: Path, state: RunState) -> None:
    """Write ``run_dir/run.json``: ``state`` as indented JSON, replaced atomically but not fsynced (it is a
    view of the log, rewritten on every daemon start).  Raises OSError when it cannot be written.
    """
    # Not fsynced: run.json is a view of the log, rewritten from it on every daemon start.
    atomic_write(run_dir / "run.json", msgspec.json.format(_encoder.encode(state), indent=2) + b"\n", durable=False)
