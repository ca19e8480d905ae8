"""What kind of thing a user-given path is, decided by ``os.stat`` before anything opens it.

Opening a named pipe (FIFO) for reading blocks until some other process opens it for writing,
and reading a character device (``/dev/zero``, a terminal) may never end.  A corpus, tokenizer
or prompts file is always a regular file (or, for a corpus or a tokenizer, a folder), so
anything else is refused in one line before the first ``open``:

    --corpus /data/web.txt is a named pipe (FIFO), not a file or folder

``open_regular`` is the reader's guard (the worker, ``tritterctl tokenizer train``): it opens
with ``O_NONBLOCK`` — which returns at once even for a FIFO — and re-checks the opened file
with ``fstat``, so a path swapped for a FIFO between the check and the open cannot block either.
Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import IO

from tritter.protocol.oserrors import describe_mode


class NotRegularFile(OSError):
    """``open_regular`` found something other than a regular file.  An ``OSError`` (errno
    ``EINVAL``), so readers that report "cannot read: <strerror>" say what it is; ``str()`` is
    one line: ``PATH is a named pipe (FIFO), not a file``."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        super().__init__(errno.EINVAL, f"is {what}, not a file", str(path))

    def __str__(self) -> str:
        return f"{self.filename} {self.strerror}"


def special_path_problem(path: str | os.PathLike[str], label: str = "", folder_ok: bool = True) -> str | None:
    """One line when ``path`` (symlinks followed) is a FIFO, socket or device — or a folder when
    not ``folder_ok`` — else None.  A path that cannot be stat'ed (missing, permission) also gives
    None: the caller's own checks word those.  ``label`` starts the line (e.g. ``"--corpus"``).

    Example: ``--corpus /x/in is a named pipe (FIFO), not a file or folder``.  Never opens ``path``.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: an embedded NUL byte
        return None
    what = describe_mode(mode)
    if what is None and (folder_ok or not stat.S_ISDIR(mode)):
        return None
    what = what or "a folder"
    wanted = "a file or folder" if folder_ok else "a file"
    return f"{label} {path} is {what}, not {wanted}".lstrip()


def open_regular(path: str | os.PathLike[str], buffering: int = -1) -> IO[bytes]:
    """Open a regular file for binary reading without ever blocking on a FIFO or device.

    ``os.stat`` first (a device is never opened), then ``open(O_RDONLY | O_NONBLOCK)`` and ``fstat``
    of what was opened (closes the stat-then-open race), then blocking mode back on for the read.
    ``buffering`` as ``open()``'s (0 = a raw unbuffered file).  Returns a file object the caller
    closes.  Raises ``NotRegularFile`` (an OSError) for anything but a regular file — a folder
    included — and OSError as ``open()`` does (missing, permission).
    """
    mode = os.stat(path).st_mode
    what = describe_mode(mode) or ("a folder" if stat.S_ISDIR(mode) else None)
    if what:
        raise NotRegularFile(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, describe_mode(mode) or "a folder")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return open(fd, "rb", buffering=buffering, closefd=True)
    except BaseException:
        os.close(fd)
        raise
