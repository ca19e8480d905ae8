"""Remote access: CURVE keys for tritterd and the list of clients allowed in.

The daemon's key pair is made on first start in ``HOME/keys/server.key`` (public, give it to
clients) and ``HOME/keys/server.key_secret``.  A client gets in when its public certificate
(made with ``tritterctl keygen``) is in ``HOME/keys/authorized/``; that folder is re-read while
the daemon runs, so adding or removing a file takes effect within a couple of seconds.
Everyone else fails the CURVE handshake and gets nothing: no events, no control.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

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


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.key")))


class Gatekeeper:
    """A ZAP authenticator that allows exactly the certificates in ``authorized/``."""

    def __init__(self, ctx: zmq.asyncio.Context, authorized: Path) -> None:
        self.authorized = authorized
        self._auth = AsyncioAuthenticator(ctx)
        self._auth.start()
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload()

    def reload(self) -> None:
        """Re-read ``authorized/`` when its ``*.key`` files changed (name, mtime, size) and allow exactly those; OSError when a key file cannot be stat'ed."""
        seen = _fingerprint(self.authorized)
        if seen == self._seen:
            return
        self._auth.configure_curve(domain="*", location=str(self.authorized))
        if self._seen is not None:
            log.info("authorized clients changed: %d certificate(s) in %s", len(seen), self.authorized)
        self._seen = seen

    def start_watching(self) -> None:
        """Start a task that calls ``reload`` every ``RELOAD_INTERVAL_S`` (1 s), logging (not raising) an
        unreadable folder; needs a running loop."""
        async def watch() -> None:
            while True:
                await asyncio.sleep(RELOAD_INTERVAL_S)
                try:
                    self.reload()
                except OSError as error:
                    log.error("cannot read %s: %s", self.authorized, error)

        self._task = asyncio.get_running_loop().create_task(watch())

    def stop(self) -> None:
        """Stop watching and stop the ZAP authenticator."""
        if self._task:
            self._task.cancel()
        self._auth.stop()
