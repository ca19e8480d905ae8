"""Remote access over tcp with CURVE: authorized clients get events and control, others nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Daemon, ctl, tool

from tritter.clients.connection import Connection, DaemonUnavailable
from tritter.clients.target import Target
from tritter.protocol.control import Ping


def free_port_pair() -> int:
    """A port P with P and P+1 free right now (tritterd --bind uses both); another process may
    still take them before tritterd binds, which ``start_remote_daemon`` detects and retries."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port >= 65534:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def start_remote_daemon(home: Path) -> tuple[Daemon, str]:
    """tritterd --bind on a free port pair; when a port was taken between the pick and the bind
    (tritterd exits naming the address in use), pick another pair, so that race cannot fail the test."""
    for _ in range(10):
        url = f"tcp://127.0.0.1:{free_port_pair()}"
        daemon = Daemon(home, ["--bind", url, "--no-recorder"])
        try:
            return daemon.start(), url
        except AssertionError:
            if ") is in use; pick a --bind port" not in daemon.stderr():
                raise
            daemon.stderr_path.unlink()
    raise AssertionError("no port pair could be bound in 10 tries")


def closed_port() -> socket.socket:
    """A port nothing listens on and nobody else can take while the socket stays open (bound, not
    listening: connections to it are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def remote(url: str, server_key: Path, client_key: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("tritterctl"), "--connect", url, "--server-key", str(server_key), "--client-key", str(client_key), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )


def test_curve_remote_access(home: Path, tmp_path: Path) -> None:
    daemon, url = start_remote_daemon(home)
    try:
        server_key = home / "keys" / "server.key"
        assert server_key.exists() and (home / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0
        keys = tmp_path / "client-keys"
        assert ctl(home, "keygen", str(keys), "alice").returncode == 0
        assert ctl(home, "keygen", str(keys), "mallory").returncode == 0
        alice, mallory = keys / "alice.key_secret", keys / "mallory.key_secret"

        # Not authorized (yet): nothing, and a clear line; the client gives up by itself (a hang
        # runs into remote()'s subprocess timeout and fails).
        refused = remote(url, server_key, alice, "runs")
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1 and "not authorized" in refused.stderr

        # Authorize alice without restarting the daemon (the folder is re-read every second;
        # the bound only turns "never" into a failure).
        shutil.copy(keys / "alice.key", home / "keys" / "authorized" / "alice.key")
        deadline = time.monotonic() + 120
        while (result := remote(url, server_key, alice, "runs")).returncode != 0 and time.monotonic() < deadline:
            pass
        assert result.returncode == 0 and "no runs yet" in result.stdout, result.stderr

        run_id = remote(url, server_key, alice, "start", "--start", "tiny", "--end", "tiny", "--steps", "2").stdout.strip()
        assert run_id
        assert remote(url, server_key, alice, "wait", run_id, "--timeout", "300", timeout=330).returncode == 0
        lines = remote(url, server_key, alice, "events", "--json").stdout.splitlines()
        assert len(lines) >= 5 and lines == ctl(home, "events", "--json").stdout.splitlines()

        # The keys from the environment instead of flags (TRITTER_SERVER_KEY / TRITTER_CLIENT_KEY).
        env = {**os.environ, "TRITTER_SERVER_KEY": str(server_key), "TRITTER_CLIENT_KEY": str(alice)}
        by_env = subprocess.run([tool("tritterctl"), "--connect", url, "status", run_id, "--json"], env=env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert by_env.returncode == 0 and run_id in by_env.stdout, by_env.stderr

        # A sink elsewhere: events over --connect, its files under --runs-home (the daemon runs
        # without a recorder, so these lines can only come from this one).
        elsewhere = tmp_path / "elsewhere"
        recorder = subprocess.Popen([tool("tritter-record"), "--connect", url, "--runs-home", str(elsewhere)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            metrics = elsewhere / "runs" / run_id / "metrics.jsonl"
            deadline = time.monotonic() + 120
            while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
                assert recorder.poll() is None, recorder.stderr.read() if recorder.stderr else ""
                assert time.monotonic() < deadline, "tritter-record --connect --runs-home wrote nothing"
                time.sleep(0.2)
            assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
            assert not (home / "runs" / run_id / "metrics.jsonl").exists()
        finally:
            recorder.terminate()
            recorder.wait(timeout=60)

        # mallory was never authorized: no events, no control.
        for args in (["runs"], ["events"], ["stop", run_id]):
            denied = remote(url, server_key, mallory, *args)
            assert denied.returncode == 2 and denied.stdout == "", args

        # Removing a certificate takes effect without a restart, too.
        (home / "keys" / "authorized" / "alice.key").unlink()
        deadline = time.monotonic() + 120
        while remote(url, server_key, alice, "runs").returncode == 0 and time.monotonic() < deadline:
            pass
        assert remote(url, server_key, alice, "runs").returncode == 2
    finally:
        daemon.stop()


def test_unreachable_remote_is_one_line_and_quick(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    subprocess.run([tool("tritterctl"), "keygen", str(keys), "c"], check=True, capture_output=True)
    subprocess.run([tool("tritterctl"), "keygen", str(keys), "s"], check=True, capture_output=True)
    with closed_port() as held:  # nothing listens there, and nobody can start to
        url = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        result = remote(url, keys / "s.key", keys / "c.key_secret", "status")  # gives up by itself: no hang
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_bad_key_file_does_not_freeze_authorization(home: Path, tmp_path: Path) -> None:
    """A garbage .key next to good ones, already there at start (a restart): the good key works, the bad
    file is named once in the log, a key added later is allowed and a deleted one refused, no restart."""
    keys = tmp_path / "client-keys"
    for name in ("alice", "bob"):
        assert ctl(home, "keygen", str(keys), name).returncode == 0
    authorized = home / "keys" / "authorized"
    authorized.mkdir(parents=True)
    (authorized / "bad.key").write_text("garbage\n")
    shutil.copy(keys / "alice.key", authorized / "alice.key")
    daemon, url = start_remote_daemon(home)
    try:
        server_key = home / "keys" / "server.key"
        alice, bob = keys / "alice.key_secret", keys / "bob.key_secret"
        result = remote(url, server_key, alice, "runs")
        assert result.returncode == 0 and "no runs yet" in result.stdout, result.stderr
        assert remote(url, server_key, bob, "runs").returncode == 2

        shutil.copy(keys / "bob.key", authorized / "bob.key")  # added: allowed within the re-read
        deadline = time.monotonic() + 60
        while (result := remote(url, server_key, bob, "runs")).returncode != 0 and time.monotonic() < deadline:
            pass
        assert result.returncode == 0, result.stderr

        async def revoke_alice() -> None:
            # alice holds a connection opened (and handshaken) while she was allowed, like a TUI or a sink.
            session = Connection(Target.remote(url, server_key, alice), timeout_s=3.0)
            try:
                assert (await session.request(Ping())).ok
                (authorized / "alice.key").unlink()  # deleted: new connections refused within the re-read...
                deadline = time.monotonic() + 60
                while (result := await asyncio.to_thread(remote, url, server_key, alice, "runs")).returncode == 0:
                    assert time.monotonic() < deadline, "a deleted key still gets answers"
                assert result.returncode == 2 and "not authorized" in result.stderr
                with pytest.raises(DaemonUnavailable):  # ...and the open one gets no more answers either
                    await session.request(Ping())
            finally:
                await session.close()

        asyncio.run(revoke_alice())
        assert remote(url, server_key, bob, "runs").returncode == 0  # the others unaffected

        log = daemon.stderr()
        named = [line for line in log.splitlines() if str(authorized / "bad.key") in line]
        assert len(named) == 1 and "no public key" in named[0], log
        assert "Traceback" not in log
    finally:
        daemon.stop()


def test_busy_control_port_is_named(home: Path) -> None:
    """--bind tcp://127.0.0.1:P with P+1 taken: one line naming P+1 as the control port, exit 2."""
    for _ in range(10):
        port = free_port_pair()
        with socket.socket() as taken:
            try:
                taken.bind(("127.0.0.1", port + 1))
            except OSError:
                continue  # taken by someone else between the pick and now: pick again
            taken.listen()
            result = subprocess.run([tool("tritterd"), "--home", str(home), "--bind", f"tcp://127.0.0.1:{port}", "--no-recorder"],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if f"port {port} (" in result.stderr:
            continue  # P itself was taken meanwhile: not what this test is about
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("tritterd: error:")]
        assert errors == [f"tritterd: error: port {port + 1} (the control port, --bind's port + 1) is in use; "
                          "pick a --bind port P with P and P+1 both free"], result.stderr
        assert "Traceback" not in result.stderr and "Address already in use" not in result.stderr
        return
    raise AssertionError("no port pair to test with in 10 tries")


def test_runs_home_needs_connect(home: Path) -> None:
    """Every sink refuses --runs-home without --connect (it would be ignored) in one line, writing nothing."""
    runs_home = home / "elsewhere"
    for sink in ("tritter-record", "tritter-compress", "tritter-upload", "tritter-tensorboard"):
        result = subprocess.run([tool(sink), "--home", str(home), "--runs-home", str(runs_home)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert result.returncode == 2, (sink, result.stderr)
        assert result.stderr == f"{sink}: error: --runs-home goes with --connect (a remote daemon); " \
                                "a sink of a local daemon writes under its --home\n", result.stderr
    assert not runs_home.exists()
