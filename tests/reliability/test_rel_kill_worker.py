"""(b) kill -9 of the training worker only, several times: failed with the reason, resumable, exact."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Daemon, ctl
from reliability_helpers import (
    TEST_TIMEOUT_S,
    LONG,
    TINY_RUN,
    Follower,
    assert_exact_run,
    reference_losses,
    report,
    seeded,
    start_run,
    total_steps,
    wait_done,
    worker_pid,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def test_kill9_worker_repeatedly_fails_then_resumes_exactly(daemon: Daemon, home: Path) -> None:
    began = time.monotonic()
    reference = reference_losses(TINY_RUN)
    daemon.start()
    run_id = start_run(home, TINY_RUN, "kill9-worker")
    points = sorted(seeded("kill-worker").sample(range(1, total_steps(TINY_RUN)), 6 if LONG else 3))
    kills = []
    since = 1  # everything after the previous failure (not the head when the follower starts:
    # the resumed run may reach the next kill point before the follower connects)
    for step in points:
        follower = Follower(home, since=since)
        try:
            follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "step" and e["step"] >= step, timeout=420)
            pid = worker_pid(daemon)
            os.kill(pid, signal.SIGKILL)
            failed = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "run" and e["status"] != "running", timeout=60)
        finally:
            follower.close()
        assert failed["status"] == "failed", failed
        since = failed["seq"] + 1
        assert "SIGKILL" in failed["reason"], failed["reason"]
        status = ctl(home, "status", run_id).stdout
        assert "failed" in status and "SIGKILL" in status, status  # the reason is shown to the user
        assert ctl(home, "wait", run_id, "--timeout", "10", check=False).returncode == 1  # a failed run is over
        ctl(home, "resume", run_id)
        kills.append({"at_step": step, "reason": failed["reason"]})
    wait_done(home, run_id, daemon)
    figures = assert_exact_run(home, run_id, TINY_RUN, reference)
    assert daemon.process is not None and daemon.process.poll() is None  # the daemon itself never went down
    report("b_kill9_worker", kills=kills, kill_count=len(kills), recoveries=len(kills),
           duration_s=round(time.monotonic() - began, 1), **figures)
