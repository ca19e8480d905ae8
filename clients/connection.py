"""One request, one reply: a client's line to tritterd's ROUTER socket (Lazy Pirate).

A client sends one msgpack ``Request`` frame from a DEALER socket and waits for one ``Reply``
frame.  When no reply comes within ``timeout_s`` the DEALER is closed (linger 0) and the next
request gets a fresh one: ZeroMQ routes a late reply to the old socket's identity, which no
longer exists, so a stale reply can never be taken for the answer to a later request.

The daemon is named by a ``Target``: the local one over ipc, or a remote one over tcp with
CURVE keys (clients/target.py).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import socket
import time
from pathlib import Path

import zmq
import zmq.asyncio

from tritter.clients.target import Target
from tritter.protocol.oserrors import os_error_reason
from tritter.protocol.control import Reply, Request
from tritter.protocol.home import Layout
from tritter.protocol.wire import decode_as, encode

_IPC = "ipc://"


class DaemonUnavailable(Exception):
    """tritterd cannot be reached; ``str()`` is one line a user can act on."""


class RequestFailed(Exception):
    """tritterd answered, and said no (``Reply.ok`` was False); ``str()`` is ``Reply.error``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.error or "request failed (tritterd gave no reason)")
        self.reply = reply


def ipc_path(endpoint: str) -> Path | None:
    """The socket file behind an ``ipc://`` endpoint, None for other transports."""
    return Path(endpoint[len(_IPC) :]) if endpoint.startswith(_IPC) else None


def _probe_unix(path: Path) -> str | None:
    """Why nobody can be listening on ``path`` (None when someone may be).

    libzmq leaves its ipc socket file behind when the daemon dies, and a DEALER connecting to a
    dead file just retries quietly; one plain connect() tells "refused" apart at once.
    """
    if not path.exists():
        return "missing"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(str(path))
    except BlockingIOError:  # listening, backlog full: it is alive, let ZeroMQ wait for it
        return None
    except OSError as error:
        if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "refused"
        return os_error_reason(error)
    finally:
        probe.close()
    return None


STARTING_WAIT_S = 20.0  # how long a client waits for a tritterd that is still coming up


def daemon_pid(home: Path) -> int | None:
    """The pid of the tritterd that holds ``home`` (from ``HOME/tritterd.lock``), None when no live
    tritterd process has that pid.  Read-only: the client never takes the lock itself, which would
    make a daemon starting at that moment think the home is taken."""
    try:
        pid = int(Layout(home).lock.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if _is_tritterd(cmdline) else None


def _is_tritterd(cmdline: bytes) -> bool:
    """Whether a /proc cmdline is tritterd's (``tritterd ...``, ``python .../tritterd ...`` or
    ``python -m tritter.daemon.main ...``)."""
    head = cmdline.split(b"\0")[:3]
    return any(arg.rsplit(b"/", 1)[-1] == b"tritterd" or arg == b"tritter.daemon.main" for arg in head)


def _young_daemon_exists(max_age_s: float = 5.0) -> bool:
    """Whether a tritterd process started less than ``max_age_s`` seconds ago (it may still be
    importing, before it takes any home's lock)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    except (OSError, ValueError):
        return False
    for proc in procs:
        try:
            if not _is_tritterd((proc / "cmdline").read_bytes()):
                continue
            started = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        except (OSError, ValueError, IndexError):
            continue
        if uptime - started < max_age_s:
            return True
    return False


def _wait_while_starting(home: Path, path: Path, why: str) -> str | None:
    """``tritterd &`` then a client at once: the daemon is importing, or holds its home but has
    not bound its socket yet.  Wait (up to STARTING_WAIT_S) while a live tritterd holds the home,
    or while a just-started one may still be on its way to it; return the last probe result
    (None: it answers now)."""
    deadline = time.monotonic() + STARTING_WAIT_S
    while why is not None and time.monotonic() < deadline:
        if daemon_pid(home) is None and not _young_daemon_exists():
            break
        time.sleep(0.1)
        why = _probe_unix(path)
    return why


class Connection:
    """A client's control connection to one tritterd (``target``, or a Layout for the local one): a DEALER
    socket opened on first ``request``, one request in flight, each answered within ``timeout_s`` seconds.
    """

    def __init__(
        self, target: Target | Layout, timeout_s: float = 5.0, ctx: zmq.asyncio.Context | None = None
    ) -> None:
        self.target = target if isinstance(target, Target) else Target.local(target)
        self.timeout_s = timeout_s
        self.endpoint = self.target.api
        self.events_endpoint = self.target.events
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._lock: asyncio.Lock | None = None  # one request in flight: a DEALER reply carries no id

    def connect_socket(self, sock: zmq.asyncio.Socket, endpoint: str) -> None:
        """Connect one client socket (DEALER or SUB), with CURVE keys for a remote daemon."""
        if self.target.curve is not None:
            self.target.curve.apply(sock)
        sock.connect(endpoint)

    def check_reachable(self, endpoint: str) -> None:
        """Fail at once when an ipc endpoint has no daemon behind it (tcp endpoints: nothing to check)."""
        path = ipc_path(endpoint)
        if path is None:
            return
        why = _probe_unix(path)
        if why in ("missing", "refused") and self.target.home is not None:
            why = _wait_while_starting(self.target.home, path, why)
        where = self.target.where
        if why == "missing":
            raise DaemonUnavailable(
                f"tritterd is not running on {where} (no socket at {path}); start it with: tritterd --home {shlex.quote(where)}"
            )
        if why == "refused":
            raise DaemonUnavailable(
                f"tritterd is not running on {where} (stale socket {path}, nothing listening); "
                f"start it with: tritterd --home {shlex.quote(where)}"
            )
        if why:
            raise DaemonUnavailable(f"cannot reach tritterd on {where}: {why} ({path})")

    # -- requests -----------------------------------------------------------------------------
    async def request(self, request: Request) -> Reply:
        """Send one request and return the daemon's reply.

        Raises DaemonUnavailable (not running, or no answer in time), RequestFailed (it said no)
        and ProtocolError (an answer this build cannot read).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            reply = await self._exchange(encode(request))
        if not reply.ok:
            raise RequestFailed(reply)
        return reply

    async def _exchange(self, payload: bytes) -> Reply:
        sock = self._socket()
        try:
            await sock.send(payload, flags=zmq.NOBLOCK)  # queues at once: one request in flight
            if not await sock.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                hint = " (unreachable, or this client's key is not authorized there)" if self.target.is_remote else ""
                raise DaemonUnavailable(
                    f"tritterd on {self.target.where} did not answer within {self.timeout_s:g} s{hint}"
                )
            frames = await sock.recv_multipart()
        except zmq.ZMQError as error:
            self._discard()
            raise DaemonUnavailable(f"cannot talk to tritterd at {self.endpoint}: {error}") from None
        except BaseException:
            # Timeout or cancellation: the reply may still come, so this socket must never be
            # read again (Lazy Pirate).
            self._discard()
            raise
        return decode_as(frames[-1], Reply)  # [-1]: tolerate an empty REQ-style delimiter frame

    def _socket(self) -> zmq.asyncio.Socket:
        path = ipc_path(self.endpoint)
        if self._sock is not None and path is not None and not path.exists():
            self._discard()  # the daemon went away: say so now rather than after the timeout
        if self._sock is None:
            self.check_reachable(self.endpoint)
            self._sock = self._open()
        return self._sock

    def _open(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self.connect_socket(sock, self.endpoint)
        except zmq.ZMQError as error:
            sock.close(linger=0)
            raise DaemonUnavailable(f"cannot connect to tritterd at {self.endpoint}: {error}") from None
        return sock

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def close(self) -> None:
        """Close the request socket (linger 0); the next request opens a new one."""
        self._discard()
