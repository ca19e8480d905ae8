"""Files that are projections of the event log are rebuilt from it: a truncated or deleted
``metrics.jsonl`` (each step exactly once, in order) and a deleted ``run.json``.

A stand-in worker sends the steps (fast, no training); the recorder is the daemon's real
supervised child, killed with SIGKILL to restart it as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from conftest import Daemon, children_of, cmdline, ctl, read_metrics, wait_until
from crafted import FakeWorker, run_events, write_log
from tritter.protocol.events import RunEvent, StepEvent

RUN_ID = "20260101-000000-5eed"


def steps_in(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def recorder_pid(daemon: Daemon) -> int:
    found = [p for p in children_of(daemon.pid) if "tritter.clients.record" in cmdline(p)]
    assert len(found) == 1, found
    return found[0]


def step(n: int) -> StepEvent:
    return StepEvent(run_id=RUN_ID, step=n, loss=9.0 - n / 10, gradient_norm=1.0, phase="full", was_predicted=False,
                     prediction_error=None, step_time_ms=100.0, stage="tiny", lr=1e-3, tokens=1024 * n, tokens_per_s=1e4)


def test_metrics_and_run_json_are_rebuilt_from_the_log(home: Path) -> None:
    write_log(home, run_events(RUN_ID, "derived", "paused"))
    daemon = Daemon(home).start()
    metrics = home / "runs" / RUN_ID / "metrics.jsonl"
    worker = FakeWorker(home, RUN_ID)
    try:
        worker.send(RunEvent(run_id=RUN_ID, status="resumed"))
        for n in range(1, 7):
            worker.send(step(n))
        wait_until(lambda: len(steps_in(metrics)) == 6, 60, "the recorder did not write 6 lines")

        # truncated under a running recorder: the next step finds the gap and refills it
        lines = metrics.read_bytes().splitlines(keepends=True)
        os.truncate(metrics, sum(map(len, lines[:3])))
        worker.send(step(7))
        wait_until(lambda: steps_in(metrics)[-1:] == [7], 60, "step 7 was not written")
        assert steps_in(metrics) == list(range(1, 8))

        # deleted, then the recorder restarts (a crash): rebuilt at start
        first = recorder_pid(daemon)
        metrics.unlink()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: steps_in(metrics) == list(range(1, 8)), 60, "metrics.jsonl was not rebuilt after a restart")

        # truncated mid-line while no recorder runs, then a restart: cut, refilled, no duplicate
        second = recorder_pid(daemon)
        assert second != first
        data = metrics.read_bytes()
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: second not in children_of(daemon.pid), 10, "the recorder did not die")
        os.truncate(metrics, data.index(b"\n", data.index(b"\n") + 1) + 5)  # two lines and a torn third
        wait_until(lambda: steps_in(metrics) == list(range(1, 8)) if metrics.read_bytes().endswith(b"\n") else False,
                 60, "metrics.jsonl was not refilled after the restart")
        rows = read_metrics(home, RUN_ID)
        assert [r["loss"] for r in rows] == [9.0 - n / 10 for n in range(1, 8)]  # the logged values

        # run.json deleted: the daemon rewrites it from its fold (within a few seconds)
        run_json = home / "runs" / RUN_ID / "run.json"
        run_json.unlink()
        wait_until(run_json.exists, 30, "run.json was not rewritten")
        assert json.loads(run_json.read_text())["current_step"] == 7
    finally:
        worker.close()
        daemon.stop()
    assert "rebuilding the missing lines" in daemon.stderr()
    assert ctl(home, "runs", check=False).returncode == 2  # stopped: nothing left running
