"""Crashes and commands mid-run: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import Daemon, children_of, cmdline, ctl, events, follow_until, wait_for_metrics


def child_running(daemon: Daemon, module: str) -> int:
    matches = [pid for pid in children_of(daemon.pid) if module in cmdline(pid)]
    assert len(matches) == 1, f"expected one {module} child, found {matches}"
    return matches[0]


def start_tiny(home: Path, steps: int, every: int = 4, *extra: str) -> str:
    args = ["start", "--start", "tiny", "--end", "tiny", "--steps", str(steps), "--checkpoint-every", str(every)]
    return ctl(home, *args, *extra).stdout.strip()


def step_reached(run_id: str, step: int):  # type: ignore[no-untyped-def]
    return lambda e: e["kind"] == "step" and e["run_id"] == run_id and e["step"] >= step


def run_events(home: Path, run_id: str) -> list[dict]:
    return [e for e in events(home) if e.get("run_id") == run_id]


def test_recorder_killed_mid_run_writes_each_step_once(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = start_tiny(home, 16)
    wait_for_metrics(home, run_id, 3)
    first = child_running(daemon, "tritter.clients.record")
    os.kill(first, signal.SIGKILL)
    follow_until(home, step_reached(run_id, 10))
    assert ctl(home, "wait", run_id, "--timeout", "300", check=False).returncode == 0
    rows = wait_for_metrics(home, run_id, 16)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert child_running(daemon, "tritter.clients.record") != first  # the daemon restarted it


def test_sigterm_checkpoints_and_the_next_start_resumes(daemon: Daemon, home: Path) -> None:
    daemon.start()
    # Far more steps than can happen before the SIGTERM (so the run is surely mid-way) and no
    # periodic checkpoint: the only one is the shutdown's.  The test stops it after the resume.
    run_id = start_tiny(home, 100_000, 100_000)
    follow_until(home, step_reached(run_id, 5))
    assert daemon.terminate() == 0
    daemon.start()
    evs = run_events(home, run_id)
    checkpoints = [e for e in evs if e["kind"] == "checkpoint"]
    assert [c["reason"] for c in checkpoints] == ["shutdown"] and checkpoints[0]["step"] >= 5
    head = evs[-1]["seq"]
    resumed = follow_until(home, lambda e: e.get("run_id") == run_id and e["kind"] == "run" and e["status"] == "resumed",
                           since=head)
    assert resumed["resume_step"] == checkpoints[0]["step"]
    follow_until(home, step_reached(run_id, checkpoints[0]["step"] + 2), since=head)
    ctl(home, "stop", run_id)
    assert ctl(home, "wait", run_id, "--timeout", "120", check=False).returncode == 1  # stopped
    steps = [e["step"] for e in run_events(home, run_id) if e["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= checkpoints[0]["step"] + 2


def test_worker_killed_fails_the_run_and_resume_continues(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = start_tiny(home, 16)
    follow_until(home, step_reached(run_id, 6))
    os.kill(child_running(daemon, "tritter.daemon.worker_main"), signal.SIGKILL)
    failed = follow_until(home, lambda e: e["kind"] == "run" and e["status"] == "failed")
    assert "SIGKILL" in failed["reason"]
    assert ctl(home, "wait", run_id, "--timeout", "30", check=False).returncode == 1
    assert "failed" in ctl(home, "status", run_id).stdout
    ctl(home, "resume", run_id)
    assert ctl(home, "wait", run_id, "--timeout", "300", check=False).returncode == 0
    steps = [e["step"] for e in run_events(home, run_id) if e["kind"] == "step"]
    assert steps == list(range(1, 17))
    assert [r["step"] for r in wait_for_metrics(home, run_id, 16)] == list(range(1, 17))


def test_pause_checkpoint_resume_stop(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = start_tiny(home, 400, 1000)
    follow_until(home, step_reached(run_id, 2))
    ctl(home, "pause", run_id)
    paused = follow_until(home, lambda e: e["kind"] == "run" and e["status"] == "paused")
    assert "paused" in ctl(home, "status", run_id).stdout
    head = paused["seq"]
    ctl(home, "checkpoint", run_id)
    manual = follow_until(home, lambda e: e["kind"] == "checkpoint" and e["reason"] == "manual", since=head)
    ctl(home, "resume", run_id)
    follow_until(home, step_reached(run_id, manual["step"] + 2), since=head)
    ctl(home, "stop", run_id)
    assert ctl(home, "wait", run_id, "--timeout", "120", check=False).returncode == 1
    evs = run_events(home, run_id)
    statuses = [e["status"] for e in evs if e["kind"] == "run"]
    assert statuses == ["started", "paused", "resumed", "stopped"]
    reasons = [e["reason"] for e in evs if e["kind"] == "checkpoint"]
    assert reasons == ["pause", "manual", "stop"]
    err = ctl(home, "pause", run_id, check=False)
    assert err.returncode == 2 and "not running" in err.stderr


def test_standalone_recorder_catches_up_from_seq_1(home: Path) -> None:
    import subprocess

    from conftest import tool

    daemon = Daemon(home, ["--no-recorder"]).start()
    recorder = None
    try:
        run_id = start_tiny(home, 4)
        assert ctl(home, "wait", run_id, "--timeout", "300", check=False).returncode == 0
        assert not (home / "runs" / run_id / "metrics.jsonl").exists()  # nobody recorded yet
        recorder = subprocess.Popen([tool("tritter-record"), "--home", str(home)], stderr=subprocess.DEVNULL)
        assert [r["step"] for r in wait_for_metrics(home, run_id, 4)] == [1, 2, 3, 4]
    finally:
        if recorder:
            recorder.terminate()
            recorder.wait(timeout=30)
        daemon.stop()
    assert (home / "recorder.cursor").read_text().strip() == str(len(events_after_stop(home)))


def events_after_stop(home: Path) -> list[dict]:
    daemon = Daemon(home, ["--no-recorder"]).start()
    try:
        return events(home)
    finally:
        daemon.stop()
