"""Crash-safe file writes, file digests and sink cursor files, shared by the daemon and the clients (standard library only)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
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


Chunks = Iterable[bytes | bytearray | memoryview]


def source_mode(path: Path) -> int:
    """The permission bits of ``path`` (e.g. ``0o600``), for a file derived from it to keep.

    Files under HOME keep the daemon's permissions: a ``.tzst`` of a 0600 checkpoint is 0600,
    not the umask's 0644.  Raises OSError (FileNotFoundError) when ``path`` cannot be stat'ed.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


_tmp_serial = itertools.count(1)  # next() on it is atomic under the GIL: safe across threads


def default_tmp_path(path: Path) -> Path:
    """The temp sibling ``atomic_write`` uses unless told otherwise: ``.<name>.<pid>.<n>.tmp`` (hidden).

    ``n`` counts the calls in this process, so two writes of one ``path`` at once (two threads,
    or a write cut short by a signal and the next one) never share a temp file: each renames
    its own whole file into place and the last rename wins.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_serial)}.tmp")


def atomic_write_with(
    path: Path,
    write: Callable[[Path], object],
    durable: bool = True,
    *,
    tmp: Path | None = None,
    check: Callable[[Path], object] | None = None,
    mode: int | None = None,
) -> None:
    """Replace ``path`` by a file that ``write(tmp_path)`` creates, so readers see the old or the new
    file, never a mix: write the temp sibling, (fsync,) ``check`` it, rename, (fsync the folder).

    ``write`` gets the temp path (for writers that want a file name, e.g. safetensors' ``save_file``).
    ``durable`` fsyncs the data and the folder, so the new file survives a power loss.
    ``tmp`` fixes the temp name (default ``default_tmp_path``), for callers whose crash recovery
    looks for it.  ``check(tmp_path)`` runs on the finished temp file; whatever it raises aborts
    the write.  On any error the temp file is removed and the error propagates (``path`` is untouched).
    ``mode``: the new file's permission bits (a file derived from another passes the source's,
    ``source_mode``); None keeps those of the file being replaced, or the umask's default.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else default_tmp_path(path)
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            mode = source_mode(path)  # a rewrite keeps the permissions someone gave the file
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        try:
            fsync_dir(path.parent)
        except OSError:  # not every filesystem lets a directory be fsynced; the rename happened
            pass


def atomic_write(
    path: Path,
    content: bytes | bytearray | memoryview | Chunks | Callable[[BinaryIO], object],
    durable: bool = True,
    *,
    tmp: Path | None = None,
    check: Callable[[Path], object] | None = None,
    mode: int | None = None,
) -> None:
    """Replace ``path`` with ``content`` atomically (see ``atomic_write_with`` for ``durable``, ``tmp``, ``check``, ``mode``).

    ``content``: the bytes, an iterable of byte chunks (written in order, never joined), or a
    callable that writes to the open binary file.  Raises OSError from the file system.
    """

    def write(target: Path) -> None:
        with open(target, "wb") as out:
            if isinstance(content, (bytes, bytearray, memoryview)):
                out.write(content)
            elif callable(content):
                content(out)
            else:
                for chunk in content:
                    out.write(chunk)

    atomic_write_with(path, write, durable, tmp=tmp, check=check, mode=mode)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A folder that appears at ``target`` whole or not at all: fill the yielded temp folder.

    On a clean exit every file in it and the folder itself are fsynced, an existing ``target``
    is moved aside, the temp folder renamed to ``target``, the parent fsynced and the old one
    removed.  On an error the temp folder is removed and the error propagates (``target`` is
    untouched).  Concurrent writers of one ``target`` are serialised by a lock on its parent
    folder; the last one to finish wins.  Raises OSError from the file system.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                fd = os.open(item, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(tmp)
        # One swap at a time: two writers (DDP ranks, a re-export racing a resume) that both move
        # the old folder aside and rename theirs in would otherwise fail with ENOTEMPTY/ENOENT.
        with exclusive_lock(target.parent):
            old = None
            if target.exists():  # rename() cannot replace a non-empty folder: move it aside first
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
            os.rename(tmp, target)
            fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


@contextlib.contextmanager
def exclusive_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the existing ``folder`` for the ``with`` block; blocks until it is free.

    Locked through a read-only descriptor, so no lock file is left behind.  Serialises writers of
    one shared folder across processes (e.g. DDP ranks, or a re-export racing a resume).
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
