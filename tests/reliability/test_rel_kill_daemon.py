"""(a) kill -9 of tritterd at many points of one run: resumes every time, the result is exact."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import Daemon, events
from reliability_helpers import (
    TEST_TIMEOUT_S,
    GROWTH_EVERY,
    GROWTH_RUN,
    GROWTH_STEPS,
    LONG,
    Follower,
    assert_exact_run,
    log_records,
    reference_losses,
    report,
    seeded,
    start_run,
    total_steps,
    wait_done,
    worker_pid,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_plan() -> list[tuple[float, str, int]]:
    """(position, kind, step): seeded random step points, one after a periodic checkpoint,
    one during the growth tiny -> small; ordered by when they happen in the run."""
    n = total_steps(GROWTH_RUN)
    periodic = [s for s in range(GROWTH_EVERY, n, GROWTH_EVERY) if s % GROWTH_STEPS]  # not stage-end ones
    after_ckpt = [s for s in periodic if s > GROWTH_STEPS][0]  # a periodic checkpoint of the small stage
    candidates = [s for s in range(1, n) if s not in (after_ckpt, GROWTH_STEPS)]
    random_points = sorted(seeded("kill-daemon").sample(candidates, 8 if LONG else 3))
    plan = [(float(s), "step", s) for s in random_points]
    plan.append((after_ckpt + 0.5, "checkpoint", after_ckpt))
    plan.append((GROWTH_STEPS + 0.5, "growth", GROWTH_STEPS))
    return sorted(plan)


def test_kill9_daemon_at_many_points_resumes_exactly(daemon: Daemon, home: Path) -> None:
    began = time.monotonic()
    reference = reference_losses(GROWTH_RUN)
    daemon.start()
    run_id = start_run(home, GROWTH_RUN, "kill9-daemon")
    plan = kill_plan()
    done: list[dict] = []
    since = 1  # the first seq the running daemon instance logs
    for _, kind, step in plan:
        # From `since`, not from the head when this follower starts: the event a round waits for
        # may be logged while the restarted daemon comes up, before the follower connects.
        follower = Follower(home, since=since)
        try:
            if kind == "step":
                match = lambda e: e.get("run_id") == run_id and e["kind"] == "step" and e["step"] >= step  # noqa: E731
            elif kind == "checkpoint":
                match = lambda e: (  # noqa: E731
                    e.get("run_id") == run_id and e["kind"] == "checkpoint" and e["step"] == step and e["reason"] == "periodic"
                )
            else:  # the tiny stage is closed: the worker is now growing into small (and evaluating it)
                match = lambda e: e.get("run_id") == run_id and e["kind"] == "stage" and e["status"] == "completed" and e["index"] == 0  # noqa: E731
            seen = follower.until(match, timeout=420)
            worker = worker_pid(daemon)
            daemon.kill9()  # the worker dies with it (PR_SET_PDEATHSIG)
        finally:
            follower.close()
        # No worker is left training (and writing checkpoints) without its daemon.
        deadline = time.monotonic() + 60
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), f"worker {worker} outlived the kill -9 of its daemon"
        since = log_records(home / "events.log")[-1][2]["seq"] + 1  # a kill -9 tears nothing written
        restarted = time.monotonic()
        daemon.start()
        evs = [e for e in events(home) if e.get("run_id") == run_id]
        after = [e for e in evs if e["seq"] > seen["seq"] and e["kind"] == "run" and e["status"] == "resumed"]
        assert after, f"no resume announced after the kill at {kind} {step}"
        resumed = after[0]
        if kind == "growth":
            # The kill landed during growth: the small stage had not started yet.
            assert not [e for e in evs if e["kind"] == "stage" and e["index"] == 1 and e["seq"] < resumed["seq"]]
        done.append({"kind": kind, "at_step": seen.get("step"), "resume_step": resumed["resume_step"],
                     "restart_s": round(time.monotonic() - restarted, 2)})
    wait_done(home, run_id, daemon)
    figures = assert_exact_run(home, run_id, GROWTH_RUN, reference)
    resumes = [e for e in events(home) if e.get("run_id") == run_id and e["kind"] == "run" and e["status"] == "resumed"]
    assert len(resumes) >= len(plan)  # the daemon announced each one
    assert len(plan) >= 5
    report("a_kill9_daemon", kills=done, kill_count=len(done), recoveries=len(resumes),
           duration_s=round(time.monotonic() - began, 1), **figures)
