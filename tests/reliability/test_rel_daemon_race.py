"""(g) two tritterd started on the same HOME at the same moment, while a run waits to be resumed:
exactly one serves, the other refuses with a clear error, and the log never has two writers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Daemon, events
from reliability_helpers import TEST_TIMEOUT_S, LONG, Follower, assert_contiguous, log_records, report, start_run

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

ROUNDS = 8 if LONG else 3
RUN = ("--start", "tiny", "--end", "tiny", "--steps", str(ROUNDS + 4), "--checkpoint-every", "1")


def race(home: Path, round_no: int) -> tuple[Daemon, Daemon]:
    """Start two daemons back to back, released together; return (winner, loser)."""
    pair = []
    for side in "ab":
        d = Daemon(home)
        d.stderr_path = home / f"race-{round_no}-{side}.stderr"
        pair.append(d)
    # Both are created stopped and continued with one kill each: they reach the lock together.
    for d in pair:
        d.start(ready=False)
        os.kill(d.pid, signal.SIGSTOP)
    for d in pair[::-1] if round_no % 2 else pair:  # alternate who is continued first
        os.kill(d.pid, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(d.process.poll() is None for d in pair):  # type: ignore[union-attr]
        time.sleep(0.05)
    exited = [d for d in pair if d.process.poll() is not None]  # type: ignore[union-attr]
    assert len(exited) == 1, f"round {round_no}: expected exactly one daemon to refuse, {len(exited)} exited"
    loser = exited[0]
    winner = pair[1 - pair.index(loser)]
    assert loser.process.returncode == 2, loser.stderr()  # type: ignore[union-attr]  # EXIT_ERROR
    err = loser.stderr().strip()
    assert "already running" in err and err.startswith("tritterd: error: "), err
    winner.wait_ready()
    return winner, loser


def test_two_daemons_racing_on_one_home(daemon: Daemon, home: Path) -> None:
    began = time.monotonic()
    daemon.start()
    run_id = start_run(home, RUN, "race")
    current = daemon
    rounds = []
    since = 1  # the first seq the current daemon logs (a checkpoint may land before a follower connects)
    try:
        for round_no in range(ROUNDS):
            follower = Follower(home, since=since)
            try:
                follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "checkpoint", timeout=420)
            finally:
                follower.close()
            current.kill9()  # the run is left "running": whoever wins the race resumes it
            since = log_records(home / "events.log")[-1][2]["seq"] + 1
            winner, loser = race(home, round_no)
            if current is not daemon:
                current.stop()
            current = winner
            rounds.append({"round": round_no, "winner": winner.stderr_path.name[-8],
                           "loser_named_winner_pid": str(winner.pid) in loser.stderr()})
        from reliability_helpers import wait_done

        wait_done(home, run_id, current)
        evs = events(home)
        assert_contiguous(evs)
        steps = [e["step"] for e in evs if e.get("run_id") == run_id and e["kind"] == "step"]
        assert steps == list(range(1, int(RUN[RUN.index("--steps") + 1]) + 1)), "each step once: one writer"
        resumes = [e for e in evs if e.get("run_id") == run_id and e["kind"] == "run" and e["status"] == "resumed"]
        assert len(resumes) == ROUNDS, "each race resumed the run exactly once"
    finally:
        if current is not daemon:
            current.stop()
    report("g_daemon_race", rounds=rounds, refusals=ROUNDS, events=len(evs), duration_s=round(time.monotonic() - began, 1))
