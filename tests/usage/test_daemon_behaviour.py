"""tritterd as users and their tools meet it: a stalled systemd notify reader, homes whose
socket paths do not fit sun_path, ``events --follow`` across a kill -9, and the step counts
and pace that ``status`` / ``run.json`` report (a stand-in worker sends the steps)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Daemon, ctl, tool, wait_until
from crafted import FakeWorker, run_events, write_log
from tritter.daemon.eventlog import EventLog
from tritter.protocol.config import RunConfig
from tritter.protocol.events import RunEvent, StageEvent, StepEvent
from tritter.protocol.home import SUN_PATH_MAX, Layout


# -- sd_notify: a reader that never reads -------------------------------------------------------
def test_a_notify_socket_nobody_reads_never_blocks_the_daemon(home: Path, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stalled.bind(address)  # never read: its queue (net.unix.max_dgram_qlen, 10 by default) fills
    daemon = Daemon(home)
    try:
        # a watchdog ping every 50 ms fills the queue within a second
        daemon.start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}, ready=False)
        wait_until(lambda: "notify socket" in daemon.stderr() and "dropped" in daemon.stderr(), 60,
                 "the daemon did not report a dropped notification")
        for _ in range(3):  # control and catch-up keep answering, promptly
            started = time.monotonic()
            assert ctl(home, "runs", timeout=15).returncode == 0
            assert ctl(home, "events").returncode == 0
            assert time.monotonic() - started < 10
    finally:
        daemon.stop()
        stalled.close()
    assert daemon.process is not None and daemon.process.returncode == 0, daemon.stderr()


# -- socket paths: bytes, not characters --------------------------------------------------------
def test_a_home_with_a_long_non_ascii_path_works(tmp_path: Path) -> None:
    home = tmp_path / ("漢" * 30)  # 90 bytes of name: HOME/sock/workers.ipc is far past sun_path
    assert len(os.fsencode(home / "sock" / "workers.ipc")) > SUN_PATH_MAX
    layout = Layout(home)
    for endpoint in (layout.api_endpoint, layout.events_endpoint, layout.worker_endpoint):
        assert len(os.fsencode(endpoint[len("ipc://"):])) <= SUN_PATH_MAX
    assert Layout(tmp_path / ("漢" * 31)).sockets != layout.sockets  # one folder per home
    daemon = Daemon(home).start()
    try:
        assert ctl(home, "runs").stdout.startswith("no runs yet")
        assert oct(layout.sockets.stat().st_mode & 0o777) == "0o700"
    finally:
        daemon.stop()
    down = ctl(home, "status", check=False)
    assert down.returncode == 2 and "not running" in down.stderr
    hint = down.stderr.split("start it with: ", 1)[1].strip()
    assert hint.startswith("tritterd --home ") and str(home) in hint  # a command that works as printed
    path = f"{Path(tool('tritterd')).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # as with the venv active
    again = subprocess.Popen("exec " + hint, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "PATH": path})
    try:
        wait_until(lambda: again.poll() is not None or ctl(home, "runs", check=False, timeout=10).returncode == 0, 60,
                 "the hinted command did not start tritterd")
        assert again.poll() is None, f"the hinted command exited with {again.returncode}"
    finally:
        if again.poll() is None:
            again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    assert again.returncode == 0


# -- events --follow: says when the daemon is gone and when it is back ---------------------------
class Lines:
    """A subprocess's stdout and stderr lines, each read by a thread into a queue."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, q in ((proc.stdout, self.out), (proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, q=q: [q.put(line) for line in s], daemon=True).start()

    @staticmethod
    def take(q: queue.Queue[str], n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            try:
                got.append(q.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(got)} of {n} lines in {timeout} s: {got}") from None
        return got


def test_follow_reports_a_dead_daemon_and_its_return_without_gap_or_duplicate(home: Path) -> None:
    write_log(home, run_events("20260101-000000-aaaa", "one", "stopped"))  # seq 1..3
    daemon = Daemon(home).start()
    follow = subprocess.Popen([tool("tritterctl"), "--home", str(home), "events", "--follow", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines = Lines(follow)
    try:
        first = [json.loads(x)["seq"] for x in Lines.take(lines.out, 3, 60)]
        assert first == [1, 2, 3]
        daemon.kill9()
        gone = Lines.take(lines.err, 1, 30)[0]  # within a few heartbeats, not "30 s+ of silence"
        assert "stopped answering" in gone and "after seq 3" in gone, gone
        # while it is down, the log grows (as if another daemon had run): the follower must see it all
        log = EventLog(Layout(home).log)
        for event in run_events("20260101-000001-bbbb", "two", "stopped"):
            log.append(event)
        log.close()
        daemon.start()
        rest = [json.loads(x)["seq"] for x in Lines.take(lines.out, 3, 60)]
        assert rest == [4, 5, 6]  # what was logged while it was down: no gap
        back = Lines.take(lines.err, 1, 60)[0]
        assert "is back" in back and "caught up to seq 6" in back, back
        with pytest.raises(AssertionError):  # nothing more: no duplicate of 1..6 (bounded wait on the stream)
            Lines.take(lines.out, 1, 3)
    finally:
        follow.kill()
        follow.wait(timeout=10)
        daemon.stop()


# -- counts and pace ------------------------------------------------------------------------------
def test_run_wide_tokens_and_pace_ignore_pauses_and_clock_changes(home: Path) -> None:
    run_id = "20260101-000000-feed"
    config = RunConfig(start="tiny", end="small", steps=10)
    write_log(home, run_events(run_id, "counts", "paused", config=config))  # paused: not resumed at start
    daemon = Daemon(home, ["--no-recorder"]).start()
    worker = FakeWorker(home, run_id)
    now = time.time()
    try:
        def step(n: int, stage: str, tokens: int, ts: float, ms: float = 500.0) -> StepEvent:
            return StepEvent(run_id=run_id, step=n, loss=5.0, gradient_norm=1.0, phase="full", was_predicted=False,
                             prediction_error=None, step_time_ms=ms, stage=stage, lr=1e-3, tokens=tokens,
                             tokens_per_s=2048.0, ts=ts)
        worker.send(RunEvent(run_id=run_id, status="resumed"))
        for n in range(1, 11):  # stage tiny: 1024 tokens a step
            worker.send(step(n, "tiny", 1024 * n, now + n * 0.5))
        worker.send(StageEvent(run_id=run_id, status="completed", stage="tiny", index=0, step=10, params=1, tokens=10_240))
        worker.send(StageEvent(run_id=run_id, status="started", stage="small", index=1, step=10, params=2))
        worker.send(step(11, "small", 2048, now + 600))  # after a 10-minute pause
        worker.send(step(12, "small", 4096, now - 3600))  # the clock was set back an hour
        wait_until(lambda: json.loads(ctl(home, "status", run_id, "--json").stdout)["current_step"] == 12, 30,
                 "the stand-in worker's steps did not arrive")
        state = json.loads(ctl(home, "status", run_id, "--json").stdout)
        assert state["tokens"] == 4096  # this stage
        assert state["run_tokens"] == 10_240 + 4096  # the run: tiny's 10,240 plus small's 4,096
        assert state["step_ms"] == pytest.approx(500.0)  # the steps' own time: no pause, no clock jump
        text = ctl(home, "status", run_id).stdout
        assert "tokens     14,336 in the run, 4,096 in stage small" in text, text
        assert "0.50 s/step recently, ETA 4s" in text, text  # 8 steps left x 0.5 s
        assert "12/20 60%" in text
        runs = ctl(home, "runs").stdout
        assert " 4s " in runs and "12/20 60%" in runs, runs
        steps = [e for e in map(json.loads, ctl(home, "events", "--json").stdout.splitlines()) if e["kind"] == "step"]
        assert [(e["step"], e["run_tokens"]) for e in steps][-3:] == [(10, 10_240), (11, 10_240 + 2048), (12, 14_336)]
        run_json = json.loads((home / "runs" / run_id / "run.json").read_text())
        wait_until(lambda: json.loads((home / "runs" / run_id / "run.json").read_text())["current_step"] == 12, 10,
                 "run.json did not follow")
        run_json = json.loads((home / "runs" / run_id / "run.json").read_text())
        assert run_json["run_tokens"] == 14_336 and run_json["tokens"] == 4096
    finally:
        worker.close()
        daemon.stop()


def sockets_of(pid: int) -> int:
    """How many sockets process ``pid`` has open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def test_wait_says_when_the_daemon_is_gone_and_ends_when_the_run_pauses_itself(home: Path) -> None:
    run_id = "20260101-000000-wa17"
    write_log(home, run_events(run_id, "waiting", "paused"))  # paused by a user: wait keeps waiting
    daemon = Daemon(home, ["--no-recorder"]).start()
    wait = subprocess.Popen([tool("tritterctl"), "--home", str(home), "wait", run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines = Lines(wait)
    try:
        # wait asks for the run's status (one socket), then subscribes (a SUB and a catch-up
        # socket): kill the daemon only once it is waiting, not while it first asks.
        wait_until(lambda: sockets_of(wait.pid) >= 3, 60, "tritterctl wait did not subscribe")
        daemon.kill9()
        gone = Lines.take(lines.err, 1, 30)[0]
        assert "stopped answering" in gone, gone
        assert wait.poll() is None  # still waiting: the run has not ended
        daemon.start()
        assert "is back" in Lines.take(lines.err, 1, 60)[0]
        worker = FakeWorker(home, run_id)
        try:
            worker.send(RunEvent(run_id=run_id, status="resumed"))
            worker.send(RunEvent(run_id=run_id, status="paused"))  # a user's pause: not the end
            worker.send(RunEvent(run_id=run_id, status="resumed"))
            worker.send(RunEvent(run_id=run_id, status="paused",
                                 reason="cannot write the step 8 checkpoint: No space left on device (ENOSPC)"))
            assert wait.wait(timeout=60) == 1
        finally:
            worker.close()
        out = Lines.take(lines.out, 1, 10)[0]
        assert "paused itself" in out and "No space left on device" in out, out
    finally:
        wait.kill()
        wait.wait(timeout=10)
        daemon.stop()
