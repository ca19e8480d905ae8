"""Where things live: the home directory and the sockets under it."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# ipc:// paths are limited by sun_path: 108 *bytes* on Linux, one of them the NUL.  A home whose
# HOME/sock/NAME.ipc would not fit (a deep or non-ASCII path: one CJK character is 3 bytes)
# gets its sockets in a short private folder keyed by a hash of the home instead.
SUN_PATH_MAX = 107
_NAME_BUDGET = len(b"/workers.ipc") + 8  # the longest socket name, with room for a new one
RUNTIME_BASE = "/tmp"  # not $TMPDIR/$XDG_RUNTIME_DIR: daemon and clients must agree without sharing env


def resolve_home(arg: str | os.PathLike[str] | None = None) -> Path:
    """--home DIR, else $TRITTER_HOME, else ~/.local/share/tritter."""
    if arg:
        return Path(arg).expanduser().absolute()
    env = os.environ.get("TRITTER_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".local" / "share" / "tritter"


@dataclass(frozen=True)
class Layout:
    """The paths under one tritter home (``home``, absolute): log, lock, cache, run folders and socket endpoints."""

    home: Path

    @property
    def runs(self) -> Path:
        """``HOME/runs``: one folder per run."""
        return self.home / "runs"

    @property
    def sockets(self) -> Path:
        """HOME/sock when its socket paths fit sun_path, else ``/tmp/tritter-UID/<hash of HOME>``
        (docs/operations.md).  Both are private to the daemon's user (mode 0700)."""
        local = self.home / "sock"
        if len(os.fsencode(local)) + _NAME_BUDGET <= SUN_PATH_MAX:
            return local
        return runtime_socket_dir(self.home)

    def make_sockets_dir(self) -> Path:
        """Create the socket folder (and its private parent, for a runtime one), mode 0700.

        Raises ValueError (one line) when a runtime folder exists but is not a private folder of
        this user: someone else could then listen in on, or impersonate, the daemon.
        """
        where = self.sockets
        if where.parent != self.home:
            _private_dir(where.parent)
        _private_dir(where)
        return where

    @property
    def log(self) -> Path:
        """``HOME/events.log``: the daemon's event log, the single source of truth."""
        return self.home / "events.log"

    @property
    def lock(self) -> Path:
        """``HOME/tritterd.lock``: the lock file that keeps a second daemon off this home."""
        return self.home / "tritterd.lock"

    @property
    def cache(self) -> Path:
        """``HOME/cache``: derived data (e.g. tokenized corpora) that can be rebuilt."""
        return self.home / "cache"

    def run_dir(self, run_id: str) -> Path:
        """``HOME/runs/<run_id>``: the folder of one run (not created here)."""
        return self.runs / run_id

    def _ipc(self, name: str) -> str:
        path = self.sockets / f"{name}.ipc"
        if len(os.fsencode(path)) > SUN_PATH_MAX:  # only a very long $HOME-independent name gets here
            raise ValueError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes")
        return f"ipc://{path}"

    @property
    def events_endpoint(self) -> str:
        """The bus's ipc:// endpoint (``events.ipc`` in ``sockets``); ValueError if the path is over
        ``SUN_PATH_MAX`` bytes."""
        return self._ipc("events")

    @property
    def api_endpoint(self) -> str:
        """The control/catch-up ipc:// endpoint (``api.ipc`` in ``sockets``); ValueError if the path is over
        ``SUN_PATH_MAX`` bytes."""
        return self._ipc("api")

    @property
    def worker_endpoint(self) -> str:
        """The daemon–worker ipc:// endpoint (``workers.ipc`` in ``sockets``); ValueError if the path is over
        ``SUN_PATH_MAX`` bytes."""
        return self._ipc("workers")


def runtime_socket_dir(home: Path) -> Path:
    """``/tmp/tritter-UID/<16 hex digits of sha256(HOME)>``: short, per user, one per home."""
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path(RUNTIME_BASE) / f"tritter-{os.getuid()}" / digest


def _private_dir(path: Path) -> None:
    """mkdir ``path`` with mode 0700, or check that the existing one is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=False)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(
            f"{path} is not a private folder of this user (needed for the sockets of a home whose path "
            f"is too long for {SUN_PATH_MAX}-byte socket paths); remove it, or use a shorter --home"
        )


_TCP = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


def remote_endpoints(url: str) -> tuple[str, str]:
    """(events, control) endpoints of ``tritterd --bind tcp://HOST:PORT``: PORT and PORT+1.

    ValueError with a one-line reason when ``url`` is not ``tcp://HOST:PORT``.
    """
    match = _TCP.match(url)
    port = int(match["port"]) if match else 0
    if not match or not 0 < port < 65535:
        raise ValueError(f"expected tcp://HOST:PORT with a port below 65535, got {url!r}")
    return f"tcp://{match['host']}:{port}", f"tcp://{match['host']}:{port + 1}"
