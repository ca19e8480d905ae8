"""Crash-safe file writes, file digests and sink cursor files, shared by the daemon and the clients (standard library only)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("tritter.formats")


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, content: bytes | Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Replace ``path`` so readers see the old or the new file, never a mix (temp file + rename).

    ``durable`` also fsyncs the data and the directory, so the new file survives a power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
            else:
                content(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        try:
            fsync_dir(path.parent)
        except OSError:  # not every filesystem lets a directory be fsynced; the rename happened
            pass


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the whole file at ``path`` (64 characters). Raises OSError if it cannot be read."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_cursor(path: Path, on_unreadable: str) -> int:
    """A sink's saved cursor (the last seq it fully handled), 0 when there is none.

    An unreadable file restarts from seq 1 with a warning that ends with ``on_unreadable``
    (what re-handling old events means for that sink).
    """
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        log.warning("%s is unreadable; catching up from seq 1 (%s)", path, on_unreadable)
        return 0


def save_cursor(path: Path, seq: int) -> None:
    """Atomically and durably replace the cursor file with ``seq`` (an event seq, >= 0)."""
    atomic_write(path, f"{seq}\n".encode())
