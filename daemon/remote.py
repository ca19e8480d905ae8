"""Remote access: CURVE keys for tritterd and the list of clients allowed in.

The daemon's key pair is made on first start in ``HOME/keys/server.key`` (public, give it to
clients) and ``HOME/keys/server.key_secret``.  A client gets in when its public certificate
(made with ``tritterctl keygen``) is in ``HOME/keys/authorized/``; that folder is re-read while
the daemon runs, so adding or removing a file takes effect within a couple of seconds, and each file
is loaded on its own (a bad one is skipped and logged: ``authorized.py``).
Everyone else fails the CURVE handshake and gets nothing: no events, no control.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from tritter.daemon.authorized import AuthorizedKeys

log = logging.getLogger("tritterd.remote")

RELOAD_INTERVAL_S = 1.0

ServerKeys = tuple[bytes, bytes]  # (public, secret)


def bind(sock: zmq.Socket, endpoints: list[str], keys: ServerKeys | None = None) -> None:
    """Bind a daemon socket; with ``keys`` it is a CURVE server (encrypted, authorized keys only)."""
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = keys
    for endpoint in endpoints:
        sock.bind(endpoint)


class BindFailed(ValueError):
    """A ``--bind`` port could not be bound; the message is one line naming the port and what it is for.

    A ValueError (a ``--bind`` value that cannot be used here), so ``tritterd`` prints it as it is."""


def bind_remote(add: Callable[[str, ServerKeys], None], endpoint: str, keys: ServerKeys, role: str) -> None:
    """Call ``add(endpoint, keys)`` (``Bus.add_remote`` / ``Api.add_remote``) and turn a bind failure into a
    ``BindFailed`` that names the port and ``role`` (e.g. "the control port, --bind's port + 1"), instead
    of libzmq's bare "Address already in use (addr=...)".  Raises BindFailed."""
    try:
        add(endpoint, keys)
    except zmq.ZMQError as error:
        port = endpoint.rsplit(":", 1)[1]
        if error.errno == errno.EADDRINUSE:
            raise BindFailed(f"port {port} ({role}) is in use; pick a --bind port P with P and P+1 both free") from None
        raise BindFailed(f"cannot listen on {endpoint} ({role}): {error.strerror}") from None


def server_keys(keys_dir: Path) -> ServerKeys:
    """The daemon's (public, secret) CURVE keys, created on first use."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    (keys_dir / "authorized").mkdir(exist_ok=True)
    secret_file = keys_dir / "server.key_secret"
    if not secret_file.exists():
        zmq.auth.create_certificates(keys_dir, "server")
        os.chmod(secret_file, 0o600)
        log.info("created the server key pair in %s (give clients %s)", keys_dir, keys_dir / "server.key")
    public, secret = zmq.auth.load_certificate(secret_file)
    assert secret is not None
    return public, secret


class Gatekeeper:
    """A ZAP authenticator that allows exactly the public keys in ``authorized/``, each file loaded on its own
    (``AuthorizedKeys``: one bad file is skipped and logged, never blocks the others)."""

    def __init__(self, ctx: zmq.asyncio.Context, authorized: Path) -> None:
        self.authorized = AuthorizedKeys(authorized)
        self._auth = AsyncioAuthenticator(ctx)
        self._auth.start()
        # A credentials provider, not configure_curve(location=...): that one reloads the whole folder
        # and keeps the previous set when any file in it is bad.
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)
        self._task: asyncio.Task[None] | None = None
        self.authorized.scan()
        log.info("remote access: %s", self.authorized.summary())

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for a CURVE handshake: is ``key`` (z85 public key, 40 bytes) authorized now?"""
        return key in self.authorized.keys

    def allows(self, frame: zmq.Frame) -> bool:
        """Whether the sender of ``frame`` (a message received on a CURVE socket) is still authorized now:
        its ``User-Id`` is the z85 public key this ZAP handler let in at the handshake (pyzmq's
        ``curve_user_id``).  False when the frame has no User-Id."""
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:  # EINVAL: no such property (not a ZAP-checked connection)
            return False
        return isinstance(user_id, str) and user_id.encode() in self.authorized.keys

    def reload(self) -> None:
        """Re-read ``authorized/`` (only the files that changed) and allow exactly the good keys in it; never raises."""
        if self.authorized.scan():
            log.info("authorized clients changed: %s", self.authorized.summary())

    def start_watching(self) -> None:
        """Start a task that calls ``reload`` every ``RELOAD_INTERVAL_S`` (1 s); needs a running loop."""
        async def watch() -> None:
            while True:
                await asyncio.sleep(RELOAD_INTERVAL_S)
                self.reload()

        self._task = asyncio.get_running_loop().create_task(watch())

    def stop(self) -> None:
        """Stop watching and stop the ZAP authenticator."""
        if self._task:
            self._task.cancel()
        self._auth.stop()
