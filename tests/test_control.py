"""Control plane: clear one-line errors, a daemon that survives any input, one daemon per home, sd_notify."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
import zmq

from conftest import Daemon, ctl, events, follow_until
from tritter.protocol.control import Ping, Reply
from tritter.protocol.home import Layout
from tritter.protocol.wire import encode


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritterctl: error: "), result.stderr
    return lines[0]


def test_errors_without_a_daemon(home: Path) -> None:
    for args in (["runs"], ["status"], ["start"], ["stop", "x"], ["events"]):
        assert "not running" in one_line_error(ctl(home, *args, check=False, timeout=20))


def test_errors_with_a_daemon(daemon: Daemon, home: Path) -> None:
    daemon.start()
    assert "no runs yet" in one_line_error(ctl(home, "status", check=False))
    assert "unknown preset 'huge'" in one_line_error(ctl(home, "start", "--end", "huge", check=False))
    assert "bigger than" in one_line_error(ctl(home, "start", "--start", "small", "--end", "tiny", check=False))
    assert "--steps" in one_line_error(ctl(home, "start", "--steps", "0", check=False))
    assert "--hf-user" in one_line_error(ctl(home, "start", "--upload", check=False))
    assert "does not exist" in one_line_error(ctl(home, "start", "--corpus", "/nope/nothing.txt", check=False))
    assert "unrecognized arguments" in one_line_error(ctl(home, "start", "--bogus", check=False))
    assert "'many' must be a whole number" in one_line_error(ctl(home, "start", "--steps", "many", check=False))
    if not Path("/dev/nvidiactl").exists():
        assert "no NVIDIA GPU" in one_line_error(ctl(home, "start", "--cuda", check=False))
    assert "4096 is out of range (expected a process count between 1 and 1,024)" in one_line_error(
        ctl(home, "start", "--nproc", "4096", check=False))
    assert "CPU cores" in one_line_error(ctl(home, "start", "--nproc", "1000", check=False))
    assert "-1 is out of range (expected a seed between 0 and" in one_line_error(ctl(home, "start", "--seed", "-1", check=False))
    assert "no run 'ghost'" in one_line_error(ctl(home, "stop", "ghost", check=False))
    assert ctl(home, "runs").stdout.startswith("no runs yet")


def test_daemon_survives_malformed_control_messages(daemon: Daemon, home: Path) -> None:
    daemon.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(Layout(home).api_endpoint)
    rng = random.Random(1234)
    junk: list[list[bytes]] = [
        [b""], [b"\xc1"], [msgspec.msgpack.encode({"op": "nope"})], [msgspec.msgpack.encode({"op": "stop"})],
        [msgspec.msgpack.encode({"op": "start", "config": {"steps": "x"}})], [b"a", b"b", b"c"],
        [msgspec.msgpack.encode({"op": "status", "run": 12})], [msgspec.msgpack.encode([1, 2, 3])],
    ]
    junk += [[rng.randbytes(rng.randint(0, 64))] for _ in range(1500)]
    try:
        for frames in junk:
            sock.send_multipart(frames)
            reply = msgspec.msgpack.decode(sock.recv(), type=Reply)
            assert reply.ok is False and reply.error, frames
        # A catch-up asking for more than a batch is clamped; a seq out of range is refused (issue 15).
        sock.send(msgspec.msgpack.encode({"op": "catchup", "since": 1, "limit": 10**12}))
        assert msgspec.msgpack.decode(sock.recv(), type=Reply).ok
        sock.send(msgspec.msgpack.encode({"op": "catchup", "since": -5}))
        refused = msgspec.msgpack.decode(sock.recv(), type=Reply)
        assert not refused.ok and "since" in refused.error
        sock.send(encode(Ping()))
        assert msgspec.msgpack.decode(sock.recv(), type=Reply).ok
    finally:
        sock.close()
        ctx.term()
    assert daemon.process is not None and daemon.process.poll() is None
    assert ctl(home, "runs").returncode == 0


def test_second_daemon_on_the_same_home_refuses(daemon: Daemon, home: Path) -> None:
    daemon.start()
    second = Daemon(home).start(ready=False)
    assert second.process is not None
    assert second.process.wait(timeout=30) == 2  # EXIT_ERROR, the convention of every command
    assert "already running" in second.stderr()
    assert ctl(home, "runs").returncode == 0  # the first one is untouched


def test_sd_notify_ready_watchdog_stopping(home: Path, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(120)  # bounds only: each wait ends on the message it waits for
    daemon = Daemon(home, ["--no-recorder"])
    daemon.start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}, ready=False)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while not any("WATCHDOG=1" in m for m in seen) and time.monotonic() < deadline:
            seen.append(listener.recv(4096).decode())
        assert "READY=1" in seen[0] and "STATUS=" in seen[0]
        assert any("WATCHDOG=1" in m for m in seen)
        os.kill(daemon.pid, signal.SIGTERM)
        # Watchdog pings keep arriving until it stops, so the recv timeout alone would never end
        # this loop: bound it, and say what came instead of STOPPING=1.
        deadline = time.monotonic() + 120
        after: list[str] = []
        while not any("STOPPING=1" in m for m in after):
            assert time.monotonic() < deadline, f"no STOPPING=1 within 120 s of SIGTERM; got {after[-5:]}"
            after.append(listener.recv(4096).decode())
        assert daemon.process is not None and daemon.process.wait(timeout=60) == 0
    finally:
        daemon.stop()
        listener.close()


def test_bad_bind_is_one_clear_line(home: Path) -> None:
    import subprocess

    from conftest import tool

    result = subprocess.run([tool("tritterd"), "--home", str(home), "--bind", "udp://nowhere"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "tcp://HOST:PORT" in result.stderr  # EXIT_ERROR


@pytest.mark.timeout(600)
def test_stop_the_moment_a_restarted_daemon_answers_ends_the_resumed_run_stopped(home: Path) -> None:
    """The resumed worker is then still starting or preparing its corpus: the stop must reach it
    and the run end ``stopped`` by request, not ``failed`` (a lost command, or an event of no run)."""
    daemon = Daemon(home).start()
    try:
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "100000",
                     "--checkpoint-every", "100000").stdout.strip()
        follow_until(home, lambda e: e["kind"] == "step" and e["run_id"] == run_id, timeout=120)
        daemon.kill9()
        daemon = Daemon(home).start()
        # "stopping" once the resumed worker exists, "stopped" if the stop came before it was spawned.
        assert "stop" in ctl(home, "stop", run_id).stdout
        assert ctl(home, "wait", run_id, "--timeout", "300", check=False).returncode == 1  # ended, not completed
        statuses = [(e["status"], e.get("reason")) for e in events(home) if e["run_id"] == run_id and e["kind"] == "run"]
        assert statuses[-1][0] == "stopped" and "failed" not in [s for s, _ in statuses], statuses
        assert "dropped" not in daemon.stderr()
    finally:
        daemon.stop()


def test_version_of_each_program_is_the_packages() -> None:
    import tomllib

    from conftest import tool

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    for program in ("tritterctl", "tritterd"):
        out = subprocess.run([tool(program), "--version"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip().splitlines() == [f"{program} {declared} (protocol v1)"], out
