"""Promises of the interface (../shared/interface.md, docs/) that had no test, each checked so
that the test fails when the promise breaks.  Daemon-backed ones share one daemon and one tiny
run where that is natural; runs are 2 steps of ``tiny``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import Daemon, children_of, cmdline, ctl, events, tool, wait_for_metrics, wait_until

from tritter.daemon.eventlog import MAGIC
from tritter.protocol.events import PROTOCOL_VERSION
from tritter.protocol.home import Layout

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # not the venv's: another user may not be able to read it


def alive(pid: int) -> bool:
    """The process exists and has not exited (an unreaped zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def log_events(home: Path) -> list[dict]:
    """Every record of HOME/events.log decoded as plain msgpack (what is on disk, field by field)."""
    import struct

    import msgspec

    data = (home / "events.log").read_bytes()
    header = struct.Struct(">II")
    out, pos = [], len(MAGIC)
    while pos + header.size <= len(data):
        length, _ = header.unpack_from(data, pos)
        out.append(msgspec.msgpack.decode(data[pos + header.size : pos + header.size + length]))
        pos += header.size + length
    return out


def test_home_comes_from_tritter_home_else_the_xdg_default(home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITTER_HOME"}
    home.mkdir(parents=True)
    with open(home / "tritterd.stderr", "wb") as stderr:
        daemon = subprocess.Popen([tool("tritterd"), "--no-recorder"], env={**env, "TRITTER_HOME": str(home)},
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        # tritterd without --home serves $TRITTER_HOME ...
        wait_until(lambda: daemon.poll() is not None or ctl(home, "runs", check=False, timeout=20).returncode == 0, 60,
                 "tritterd on $TRITTER_HOME answering")
        assert daemon.poll() is None, (home / "tritterd.stderr").read_text()
        assert (home / "events.log").exists()
        # ... and so does tritterctl without --home.
        plain = subprocess.run([tool("tritterctl"), "runs"], env={**env, "TRITTER_HOME": str(home)},
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert plain.returncode == 0 and "no runs yet" in plain.stdout, plain.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
    # Neither --home nor $TRITTER_HOME: ~/.local/share/tritter (nothing runs there).
    user = tmp_path / "user"
    default = subprocess.run([tool("tritterctl"), "runs"], env={**env, "HOME": str(user)},
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert default.returncode == 2 and default.stderr.count("\n") == 1
    assert f"tritterd --home {user / '.local' / 'share' / 'tritter'}" in default.stderr, default.stderr


def test_tritterd_refuses_a_file_that_is_not_an_event_log(home: Path) -> None:
    home.mkdir(parents=True)
    junk = b"this is somebody's notes, not an event log\n" * 50
    (home / "events.log").write_bytes(junk)
    result = subprocess.run([tool("tritterd"), "--home", str(home), "--no-recorder"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "not a tritter event log" in result.stderr and "Traceback" not in result.stderr
    assert (home / "events.log").read_bytes() == junk, "the file was touched"
    assert not list(home.glob("events.log.corrupt-*"))


def test_one_daemon_run_keeps_its_promises(daemon: Daemon, home: Path) -> None:
    """Several promises around one tiny run: the event version, run.json's counters and times,
    one recorder per home, `wait --timeout`, private sockets, and no worker left by a kill -9."""
    daemon.start()
    t0 = time.time()
    run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "2", "--no-hybrid",
                 "--checkpoint-every", "1000", "--name", "promises").stdout.strip()
    # A second recorder on the same home waits for the daemon's own one instead of writing too.
    second = subprocess.Popen([tool("tritter-record"), "--home", str(home)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert ctl(home, "wait", run_id, "--timeout", "300", check=False).returncode == 0, daemon.stderr()
        t1 = time.time()
        assert [r["step"] for r in wait_for_metrics(home, run_id, 2)] == [1, 2]
        assert second.poll() is None  # still there, waiting
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert "another tritter-record is running" in err and "waiting" in err, err
    assert [r["step"] for r in wait_for_metrics(home, run_id, 2)] == [1, 2]  # each step once

    # Every event carries the protocol version: on the wire/JSON and in the log itself.
    shown = events(home)
    assert shown and all(e.get("v") == PROTOCOL_VERSION for e in shown), [e for e in shown if e.get("v") != PROTOCOL_VERSION][:3]
    on_disk = log_events(home)
    assert len(on_disk) == len(shown) and all(e.get("v") == PROTOCOL_VERSION for e in on_disk)

    # run.json: counters and times (unix seconds) agree with the log.
    state = json.loads((home / "runs" / run_id / "run.json").read_text())
    mine = [e for e in shown if e.get("run_id") == run_id]
    assert (state["total_forward"], state["total_backward"]) == (2, 2)  # no hybrid: a backward pass per step
    assert t0 - 1 <= state["started"] <= state["updated"] <= t1 + 1
    assert state["started"] == mine[0]["ts"] and state["updated"] == mine[-1]["ts"]

    # wait --timeout runs out on a run that keeps training: exit 124, one line.
    long_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "100000", "--no-hybrid",
                  "--checkpoint-every", "100000", "--name", "long").stdout.strip()
    timed_out = ctl(home, "wait", long_id, "--timeout", "1", check=False)
    assert timed_out.returncode == 124 and timed_out.stderr.strip().count("\n") == 0, timed_out

    # Local sockets: only the daemon's user may reach them.
    sockets = Layout(home).sockets
    assert sockets.stat().st_mode & 0o077 == 0 and sockets.stat().st_uid == os.getuid()
    if os.geteuid() == 0 and Path(SYSTEM_PYTHON).exists():  # as root, try it as another user
        for folder in home.parents:
            if folder == Path("/tmp"):
                break
            folder.chmod(folder.stat().st_mode | 0o755)  # so only the socket folder itself can refuse
        home.chmod(0o755)
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\nsys.exit(0)\n")
        api = Layout(home).api_endpoint[len("ipc://"):]
        other = subprocess.run([SYSTEM_PYTHON, "-c", probe, api], preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)),
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 13, f"another user could reach {api}: rc {other.returncode} {other.stderr}"

    # kill -9 of the daemon takes its worker with it: nothing keeps training on its own.
    workers: list[int] = []
    wait_until(lambda: bool(workers.extend(p for p in children_of(daemon.pid) if "tritter.daemon.worker_main" in cmdline(p))
                          or workers), 120, "the long run's worker")
    daemon.kill9()
    wait_until(lambda: not alive(workers[0]), 60, f"worker {workers[0]} gone after kill -9 of the daemon")
