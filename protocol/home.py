"""Where things live: the home directory and the sockets under it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# ipc:// paths are limited by sun_path (108 bytes on Linux).
_MAX_IPC_PATH = 100


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
    home: Path

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def sockets(self) -> Path:
        return self.home / "sock"

    @property
    def log(self) -> Path:
        return self.home / "events.log"

    @property
    def lock(self) -> Path:
        return self.home / "tritterd.lock"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def _ipc(self, name: str) -> str:
        path = self.sockets / f"{name}.ipc"
        if len(str(path)) > _MAX_IPC_PATH:
            raise ValueError(f"home directory path is too long for ipc sockets ({path}); use a shorter --home")
        return f"ipc://{path}"

    @property
    def events_endpoint(self) -> str:
        return self._ipc("events")

    @property
    def api_endpoint(self) -> str:
        return self._ipc("api")

    @property
    def worker_endpoint(self) -> str:
        return self._ipc("workers")


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
