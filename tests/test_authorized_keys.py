"""HOME/keys/authorized/ loaded file by file: a bad file is skipped and logged, every good key works.

Real CURVE handshakes on 127.0.0.1: tritterd's Gatekeeper (ZAP) in front of a ROUTER that echoes,
clients are DEALERs with their own key pairs.  "Answered" is a request/reply round trip; "refused"
is the client's own HANDSHAKE_FAILED_AUTH monitor event (waited on, never a sleep).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from tritter.daemon.remote import Gatekeeper

HANDSHAKE_TIMEOUT_S = 20.0  # only turns "never" into a failure


def unreadable_file(folder: Path, name: str) -> Path:
    """A regular ``.key`` entry that stat()s fine but cannot be opened for reading (EACCES).

    As a normal user: a mode-000 file.  As root (DAC is bypassed): a symlink to a write-only
    /proc/sys file, which procfs refuses to open for reading even for root."""
    path = folder / name
    if os.geteuid() != 0:
        shutil.copy(folder / "alice.key", path)
        path.chmod(0)
    else:
        path.symlink_to("/proc/sys/vm/compact_memory")
    with pytest.raises(PermissionError):
        path.open("rb").close()
    return path


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    """``tmp_path/clients`` with key pairs alice, bob, carol, dave, mallory (pyzmq certificate files)."""
    clients = tmp_path / "clients"
    clients.mkdir()
    for name in ("alice", "bob", "carol", "dave", "mallory"):
        zmq.auth.create_certificates(clients, name)
    return clients


def bad_folder(tmp_path: Path, clients: Path) -> Path:
    """authorized/ with alice and bob (good) next to every kind of bad entry."""
    folder = tmp_path / "authorized"
    folder.mkdir()
    shutil.copy(clients / "alice.key", folder / "alice.key")
    shutil.copy(clients / "bob.key", folder / "bob.key")
    (folder / "bad.key").write_text("garbage\n")
    (folder / "empty.key").write_bytes(b"")
    (folder / "malformed.key").write_text('metadata\ncurve\n    public-key = "not-a-z85-key"\n')
    (folder / "folder.key").mkdir()
    os.mkfifo(folder / "fifo.key")  # opening it would block the daemon: must never be opened
    (folder / "dangling.key").symlink_to(folder / "nowhere")
    shutil.copy(clients / "carol.key_secret", folder / "carol.key")  # a secret under a .key name
    shutil.copy(clients / "carol.key_secret", folder / "carol.key_secret")  # a secret, as it is
    unreadable_file(folder, "unreadable.key")
    return folder


class Server:
    """A CURVE ROUTER on 127.0.0.1 guarded by a Gatekeeper on ``folder``; echoes every request."""

    def __init__(self, folder: Path) -> None:
        self.ctx = zmq.asyncio.Context()
        self.public, secret = zmq.curve_keypair()
        self.gatekeeper = Gatekeeper(self.ctx, folder)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = self.public, secret
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.task = asyncio.get_running_loop().create_task(self._echo())

    async def _echo(self) -> None:
        while True:
            identity, body = await self.sock.recv_multipart()
            await self.sock.send_multipart([identity, b"echo " + body])

    async def outcome(self, clients: Path, name: str) -> str:
        """Connect as ``name`` (a fresh connection, so a fresh handshake): "answered" or "refused"."""
        public, secret = zmq.auth.load_certificate(clients / f"{name}.key_secret")
        client = self.ctx.socket(zmq.DEALER)
        client.linger = 0
        client.curve_serverkey, client.curve_publickey, client.curve_secretkey = self.public, public, secret
        monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        try:
            client.connect(self.endpoint)
            event = await asyncio.wait_for(recv_monitor_message(monitor), HANDSHAKE_TIMEOUT_S)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return "refused"
            await client.send(name.encode())
            reply = await asyncio.wait_for(client.recv(), HANDSHAKE_TIMEOUT_S)
            assert reply == b"echo " + name.encode()
            return "answered"
        finally:
            client.disable_monitor()
            monitor.close()
            client.close()

    async def outcomes(self, clients: Path, *names: str) -> dict[str, str]:
        return {name: await self.outcome(clients, name) for name in names}

    def close(self) -> None:
        self.task.cancel()
        self.gatekeeper.stop()
        self.sock.close()
        self.ctx.term()


def skipped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tritterd.remote" and r.levelno >= logging.WARNING]


def test_bad_files_are_skipped_one_line_each_and_changes_apply(tmp_path: Path, keyring: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tritterd.remote")
    folder = bad_folder(tmp_path, keyring)

    async def scenario() -> None:
        server = Server(folder)
        try:
            # At start: the good keys work despite eight bad entries; nobody else gets in.
            assert await server.outcomes(keyring, "alice", "bob", "carol", "mallory") == {
                "alice": "answered", "bob": "answered", "carol": "refused", "mallory": "refused"}
            lines = skipped_lines(caplog)
            reasons = {"bad.key": "no public key", "empty.key": "no public key", "malformed.key": "malformed public key",
                       "folder.key": "folder", "fifo.key": "not a regular file", "dangling.key": "cannot be read",
                       "unreadable.key": "cannot be read", "carol.key": "SECRET key",
                       "carol.key_secret": "SECRET key"}
            for name, reason in reasons.items():
                naming = [line for line in lines if f"{folder / name}:" in line]
                assert len(naming) == 1 and reason in naming[0], (name, lines)
            assert len(lines) == len(reasons), lines
            assert all("\n" not in line and "Error" not in line for line in lines)

            # Nothing changed: a re-read reports nothing again.
            server.gatekeeper.reload()
            assert len(skipped_lines(caplog)) == len(reasons)

            # Added while running: allowed at once (next re-read); removed: refused at once.
            shutil.copy(keyring / "dave.key", folder / "dave.key")
            (folder / "bob.key").unlink()
            server.gatekeeper.reload()
            assert await server.outcomes(keyring, "alice", "bob", "dave") == {
                "alice": "answered", "bob": "refused", "dave": "answered"}

            # A bad file fixed in place (same name) is picked up; one made bad stops counting.
            shutil.copy(keyring / "bob.key", folder / "bad.key")
            (folder / "dave.key").write_text("garbage\n")
            server.gatekeeper.reload()
            assert await server.outcomes(keyring, "bob", "dave") == {"bob": "answered", "dave": "refused"}
            assert sum(f"{folder / 'dave.key'}:" in line for line in skipped_lines(caplog)) == 1

            # Two files with the same key: said once; the key stays until the last copy is gone.
            shutil.copy(keyring / "alice.key", folder / "alice-copy.key")
            server.gatekeeper.reload()
            assert sum("alice-copy.key" in line and "same key" in line for line in skipped_lines(caplog)) == 1
            (folder / "alice.key").unlink()
            server.gatekeeper.reload()
            assert await server.outcome(keyring, "alice") == "answered"
            (folder / "alice-copy.key").unlink()
            server.gatekeeper.reload()
            assert await server.outcome(keyring, "alice") == "refused"
        finally:
            server.close()

    asyncio.run(scenario())


def test_restart_with_bad_files_present(tmp_path: Path, keyring: Path) -> None:
    folder = bad_folder(tmp_path, keyring)

    async def scenario() -> dict[str, str]:
        server = Server(folder)
        try:
            return await server.outcomes(keyring, "alice", "bob", "mallory")
        finally:
            server.close()

    for _ in range(2):  # a first start, then a restart on the same folder (a new loop and context, as a new process)
        assert asyncio.run(scenario()) == {"alice": "answered", "bob": "answered", "mallory": "refused"}


def test_missing_folder_allows_nobody_until_it_is_back(tmp_path: Path, keyring: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tritterd.remote")
    folder = tmp_path / "authorized"
    folder.mkdir()
    shutil.copy(keyring / "alice.key", folder / "alice.key")

    async def scenario() -> None:
        server = Server(folder)
        try:
            assert await server.outcome(keyring, "alice") == "answered"
            shutil.rmtree(folder)
            server.gatekeeper.reload()
            server.gatekeeper.reload()  # still missing: logged once, not every second
            assert await server.outcome(keyring, "alice") == "refused"
            assert sum("cannot read" in line for line in skipped_lines(caplog)) == 1
            folder.mkdir()
            shutil.copy(keyring / "alice.key", folder / "alice.key")
            server.gatekeeper.reload()
            assert await server.outcome(keyring, "alice") == "answered"
        finally:
            server.close()

    asyncio.run(scenario())
