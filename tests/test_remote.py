"""Remote access over tcp with CURVE: authorized clients get events and control, others nothing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from conftest import Daemon, ctl, tool


def free_port_pair() -> int:
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


def remote(url: str, server_key: Path, client_key: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("tritterctl"), "--connect", url, "--server-key", str(server_key), "--client-key", str(client_key), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )


def test_curve_remote_access(home: Path, tmp_path: Path) -> None:
    port = free_port_pair()
    url = f"tcp://127.0.0.1:{port}"
    daemon = Daemon(home, ["--bind", url, "--no-recorder"]).start()
    try:
        server_key = home / "keys" / "server.key"
        assert server_key.exists() and (home / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0
        keys = tmp_path / "client-keys"
        assert ctl(home, "keygen", str(keys), "alice").returncode == 0
        assert ctl(home, "keygen", str(keys), "mallory").returncode == 0
        alice, mallory = keys / "alice.key_secret", keys / "mallory.key_secret"

        # Not authorized (yet): nothing, and a clear line within a few seconds.
        started = time.monotonic()
        refused = remote(url, server_key, alice, "runs")
        assert refused.returncode == 2 and time.monotonic() - started < 15
        assert refused.stderr.count("\n") == 1 and "not authorized" in refused.stderr

        # Authorize alice without restarting the daemon.
        shutil.copy(keys / "alice.key", home / "keys" / "authorized" / "alice.key")
        deadline = time.monotonic() + 20
        while (result := remote(url, server_key, alice, "runs")).returncode != 0 and time.monotonic() < deadline:
            pass
        assert result.returncode == 0 and "no runs yet" in result.stdout, result.stderr

        run_id = remote(url, server_key, alice, "start", "--start", "tiny", "--end", "tiny", "--steps", "2").stdout.strip()
        assert run_id
        assert remote(url, server_key, alice, "wait", run_id, "--timeout", "300", timeout=330).returncode == 0
        lines = remote(url, server_key, alice, "events", "--json").stdout.splitlines()
        assert len(lines) >= 5 and lines == ctl(home, "events", "--json").stdout.splitlines()

        # mallory was never authorized: no events, no control.
        for args in (["runs"], ["events"], ["stop", run_id]):
            denied = remote(url, server_key, mallory, *args)
            assert denied.returncode == 2 and denied.stdout == "", args

        # Removing a certificate takes effect without a restart, too.
        (home / "keys" / "authorized" / "alice.key").unlink()
        deadline = time.monotonic() + 20
        while remote(url, server_key, alice, "runs").returncode == 0 and time.monotonic() < deadline:
            pass
        assert remote(url, server_key, alice, "runs").returncode == 2
    finally:
        daemon.stop()


def test_unreachable_remote_is_one_line_and_quick(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    subprocess.run([tool("tritterctl"), "keygen", str(keys), "c"], check=True, capture_output=True)
    subprocess.run([tool("tritterctl"), "keygen", str(keys), "s"], check=True, capture_output=True)
    started = time.monotonic()
    result = remote(f"tcp://127.0.0.1:{free_port_pair()}", keys / "s.key", keys / "c.key_secret", "status")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert time.monotonic() - started < 15
