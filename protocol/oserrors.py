"""One plain line for an OSError or a UnicodeDecodeError, shared by every command line (standard library only).

Users see ``/x/afile: it is a file, not a folder`` rather than ``[Errno 17] File exists: '/x/afile'``:
no errno numbers, no exception class names, no codec internals, never an empty path.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

# Plain words per errno; an errno not listed falls back to its strerror (lower-cased, no "[Errno N]").
_REASONS: dict[int, str] = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted (read-only or immutable?)",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "does not exist",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.EIO: "input/output error (a failing disk or a lost network mount?)",
    errno.EBUSY: "busy",
    errno.ETXTBSY: "busy (a running program)",
    errno.EXDEV: "on another file system",
    errno.ENOTEMPTY: "a folder that is not empty",
    errno.EFBIG: "file too large",
    errno.ENXIO: "no such device (a FIFO with no reader?)",
    errno.EAGAIN: "temporarily unavailable; try again",
    errno.ENOMEM: "out of memory",
}
_ERRNO_PREFIX = re.compile(r"^\[Errno \d+\]\s*")


# (test, words): the file types that are neither a regular file nor a folder (stat(7)).
_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def describe_mode(mode: int) -> str | None:
    """Words for a ``st_mode`` that is neither a regular file nor a folder ("a named pipe (FIFO)",
    "a socket", "a character device", "a block device", else "not a regular file"); None for a
    regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((words for test, words in _SPECIAL if test(mode)), "not a regular file")


def _kind(path: Path) -> str | None:
    """``"a file"``, ``"a folder"``, ``"a named pipe (FIFO)"``… for an existing ``path`` (symlinks
    followed; ``"a dangling symbolic link"`` when the last one leads nowhere), else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if path.is_symlink() else None
    except (OSError, ValueError):
        return None
    return "a folder" if stat.S_ISDIR(mode) else describe_mode(mode) or "a file"


def _blocking_parent(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder (why ENOTDIR was raised), or None."""
    for parent in reversed(path.parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:
            return None
    return None


def os_error_reason(error: OSError) -> str:
    """The plain reason of ``error`` without its path, e.g. ``"it is a file, not a folder"``, ``"permission denied"``.

    ``error``: any OSError (its ``errno`` and ``filename`` are looked at; the file system may be
    stat'ed to say *what* is in the way).  Returns one line, never empty, never ``[Errno N]``.
    """
    code = error.errno
    name = Path(os.fsdecode(error.filename)) if error.filename not in (None, "") else None
    if code == errno.EEXIST:  # mkdir(exist_ok=True) over a non-folder, or an exclusive create
        kind = _kind(name) if name is not None else None
        return f"it is {kind}, not a folder" if kind and kind != "a folder" else "already exists"
    if code == errno.ENOTDIR:
        parent = _blocking_parent(name) if name is not None else None
        kind = _kind(parent) if parent is not None else None
        if parent is not None and kind:
            return f"{parent} is {kind}, not a folder"
        kind = _kind(name) if name is not None else None
        return f"it is {kind}, not a folder" if kind else "a part of the path is not a folder"
    if code in _REASONS:
        return _REASONS[code]
    text = error.strerror or _ERRNO_PREFIX.sub("", str(error)) or "operating-system error"
    return (text[:1].lower() + text[1:]).splitlines()[0]


def os_error_line(error: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``"PATH: reason"`` for ``error``; for a failed rename PATH is the destination (``DST: it is a folder, not a file``).

    ``path``: the path to name when the error carries none (e.g. a ``write`` that hit a full disk);
    the error's own ``filename`` wins.  Without either, just the reason (never ``": reason"``).
    """
    if type(error).__str__ is not OSError.__str__:  # a subclass that words itself (formats.pathkind.NotRegularFile)
        return str(error)
    if error.filename2 not in (None, ""):
        # a rename: the source is our hidden temp file, the destination is what the user named
        reason = os_error_reason(OSError(error.errno, error.strerror, error.filename2))
        return f"{os.fsdecode(error.filename2)}: {reason}"
    reason = os_error_reason(error)
    name = error.filename if error.filename not in (None, "") else path
    if name in (None, ""):
        return reason
    return f"{os.fsdecode(name)}: {reason}"  # type: ignore[arg-type]


def decode_error_reason(error: UnicodeDecodeError) -> str:
    """``"not UTF-8 text (byte 0xba at offset 23568)"`` for ``error`` (offset: bytes into the decoded buffer)."""
    encoding = "UTF-8" if error.encoding.replace("-", "").replace("_", "").lower() == "utf8" else error.encoding
    try:
        byte = error.object[error.start]
        return f"not {encoding} text (byte 0x{byte:02x} at offset {error.start})"
    except (IndexError, TypeError):
        return f"not {encoding} text"


def error_reason(error: BaseException) -> str:
    """The plain reason of ``error`` without a path: ``os_error_reason`` for an OSError, ``decode_error_reason``
    for a UnicodeDecodeError, else the first line of ``str(error)`` (the class name when that is empty)."""
    if isinstance(error, OSError):
        return os_error_reason(error)
    if isinstance(error, UnicodeDecodeError):
        return decode_error_reason(error)
    text = _ERRNO_PREFIX.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_line(error: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """One plain line for any error a command line reports.

    OSError -> ``os_error_line(error, path)`` (``path``: named only when the OSError names no file);
    anything else -> ``error_reason`` (a UnicodeDecodeError in plain words; other errors' ``str``,
    already meant for the user, with a stray ``[Errno N]`` removed and only its first line kept).
    """
    if isinstance(error, OSError):
        return os_error_line(error, path)
    return error_reason(error)


def home_error_line(error: BaseException, home: str | os.PathLike[str]) -> str:
    """``"cannot use home HOME: reason"`` for an error met while setting up the folder ``home``.

    When the error names a path inside ``home`` (``HOME/events.log``), that part is named relative
    to it: ``cannot use home /x: events.log: it is a folder, not a file``.  Non-OS errors pass through
    ``error_line`` unchanged (they already say what is wrong).
    """
    if not isinstance(error, OSError) or error.errno is None:  # no errno: it words itself (--metrics' port)
        return error_line(error)
    home_path = Path(os.fsdecode(home))
    name = Path(os.fsdecode(error.filename)) if error.filename not in (None, "") else None
    reason = os_error_reason(error)
    if name is None or name == home_path:
        return f"cannot use home {home_path}: {reason}"
    try:
        inside = name.relative_to(home_path)
    except ValueError:  # not about the home: the path says enough
        return os_error_line(error)
    return f"cannot use home {home_path}: {inside}: {reason}"
