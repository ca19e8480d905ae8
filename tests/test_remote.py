"""Remote access over tcp with CURVE: authorized clients get events and control, others nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from conftest import Daemon, ctl, tool


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
            if "Address already in use" not in daemon.stderr():
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
