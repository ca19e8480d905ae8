"""tritterd --slots: the run queue (order, priority, hold, stop, kill -9), and tritterctl extend.

Real daemons and workers on tiny runs; every wait is on an event or a state, never a blind sleep.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Daemon, ctl, events, follow_until

SHORT = ["start", "--start", "tiny", "--end", "tiny", "--steps", "3", "--checkpoint-every", "3"]
LONG = ["start", "--start", "tiny", "--end", "tiny", "--steps", "100000", "--checkpoint-every", "100000"]


def runs(home: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in json.loads(ctl(home, "runs", "--json").stdout)}


def run_events(home: Path, run_id: str) -> list[dict]:
    return [e for e in events(home) if e["run_id"] == run_id and e["kind"] == "run"]


def first_seq(evs: list[dict], run_id: str, status: str) -> int:
    return next(e["seq"] for e in evs if e["run_id"] == run_id and e["kind"] == "run" and e["status"] == status)


@pytest.mark.timeout(600)
def test_a_run_beyond_the_slots_is_queued_and_starts_when_the_first_completes(home: Path) -> None:
    daemon = Daemon(home, ["--slots", "1"]).start()
    try:
        first = ctl(home, *SHORT, "--name", "first").stdout.strip()
        second = ctl(home, *SHORT, "--name", "second").stdout.strip()
        assert run_events(home, second)[0]["status"] == "queued"  # recorded before start returned
        table = ctl(home, "runs").stdout
        assert "queued #1" in next(line for line in table.splitlines() if line.startswith(second)) or \
            runs(home)[second]["status"] != "queued"  # (it may already have started if the first was quick)
        assert ctl(home, "wait", second, "--timeout", "400", check=False).returncode == 0, daemon.stderr()
        evs = events(home)
        assert first_seq(evs, first, "completed") < first_seq(evs, second, "started")
        state = runs(home)[second]
        assert state["status"] == "completed" and state["queue_position"] == 0 and state["current_step"] == 3
    finally:
        daemon.stop()


@pytest.mark.timeout(600)
def test_queue_order_priority_hold_and_stop_survive_kill9(home: Path) -> None:
    daemon = Daemon(home, ["--slots", "1"]).start()
    try:
        holder = ctl(home, *LONG, "--name", "holder").stdout.strip()
        follow_until(home, lambda e: e["kind"] == "step" and e["run_id"] == holder, timeout=120)
        b = ctl(home, *SHORT, "--name", "b").stdout.strip()
        c = ctl(home, *SHORT, "--name", "c").stdout.strip()
        d = ctl(home, *SHORT, "--name", "d", "--priority", "5").stdout.strip()
        places = {r: runs(home)[r]["queue_position"] for r in (b, c, d)}
        assert places == {d: 1, b: 2, c: 3}  # priority first, then first come
        assert "queued, position 1 (priority 5)" in ctl(home, "status", d).stdout

        refused = ctl(home, "extend", holder, "--end", "small", check=False)
        assert refused.returncode == 2 and "is running; only a completed run can be extended" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

        daemon.kill9()  # the queue is folded state: the log alone must restore it, in order
        daemon = Daemon(home, ["--slots", "1"]).start()
        state = runs(home)
        assert {r: state[r]["queue_position"] for r in (b, c, d)} == {d: 1, b: 2, c: 3}
        assert state[holder]["status"] == "running"

        assert "held in the queue at position 3" in ctl(home, "pause", c).stdout
        assert "removed from the queue" in ctl(home, "stop", b).stdout
        state = runs(home)
        assert (state[c]["status"], state[c]["queue_position"]) == ("paused", 0)
        assert (state[b]["status"], state[d]["queue_position"]) == ("stopped", 1)
        assert "held" in ctl(home, "runs").stdout
        assert "queued (position 2)" in ctl(home, "resume", c).stdout  # back in its place, behind d
        assert "already queued" in ctl(home, "resume", c, check=False).stderr

        ctl(home, "stop", holder)  # frees the slot: d (priority 5) goes first, then c
        follow_until(home, lambda e: e["kind"] == "run" and e["run_id"] == c and e["status"] == "started", timeout=360)
        evs = events(home)
        assert first_seq(evs, holder, "stopped") < first_seq(evs, d, "started") < first_seq(evs, d, "completed") \
            < first_seq(evs, c, "started")
        assert not any(e["run_id"] == b and e.get("status") == "started" for e in evs)  # stopped while queued
        assert [e["status"] for e in run_events(home, c)] == ["queued", "paused", "queued", "started"]
    finally:
        daemon.stop()


@pytest.mark.timeout(900)
def test_extend_grows_a_completed_run_as_the_same_run(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = ctl(home, *SHORT, "--name", "grow").stdout.strip()
    assert ctl(home, "wait", run_id, "--timeout", "400", check=False).returncode == 0, daemon.stderr()

    for end, why in (("tiny", "is not bigger than"), ("huge", "invalid choice")):
        refused = ctl(home, "extend", run_id, "--end", end, check=False)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    mismatch = ctl(home, "extend", run_id, "--end", "100m", "--steps", "1,2,3", check=False)
    assert mismatch.returncode == 2 and "--steps has 3 values but the extension adds 2 stages (small, 100m)" in mismatch.stderr

    assert "extending to small" in ctl(home, "extend", run_id, "--end", "small", "--steps", "2").stdout
    assert ctl(home, "wait", run_id, "--timeout", "400", check=False).returncode == 0, daemon.stderr()
    evs = [e for e in events(home) if e["run_id"] == run_id]
    stages = [(e["stage"], e["status"], e["step"]) for e in evs if e["kind"] == "stage"]
    assert stages == [("tiny", "started", 0), ("tiny", "completed", 3), ("small", "started", 3), ("small", "completed", 5)]
    done, grown = (e for e in evs if e["kind"] == "stage" and e["status"] in ("completed", "started")
                   and (e["stage"], e["status"]) in (("tiny", "completed"), ("small", "started")))
    assert abs(grown["eval_loss"] - done["eval_loss"]) <= 0.01 * done["eval_loss"]  # growth keeps the function
    assert [e["step"] for e in evs if e["kind"] == "step"] == [1, 2, 3, 4, 5]  # global steps continue
    assert [e["status"] for e in evs if e["kind"] == "run"] == ["started", "completed", "resumed", "completed"]
    state = json.loads((home / "runs" / run_id / "run.json").read_text())
    assert state["config"]["end"] == "small" and state["total_steps"] == 5 and state["current_step"] == 5
    assert (home / "runs" / run_id / "export" / "small" / "config.json").exists()
    assert (home / "runs" / run_id / "export" / "tiny" / "config.json").exists()
