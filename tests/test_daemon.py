"""tritterd end to end: real daemon, real worker processes, real sockets, driven by tritterctl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Daemon, ctl, events, follow_until, wait_for_metrics

TINY_RUN = ["start", "--start", "tiny", "--end", "small", "--steps", "6", "--checkpoint-every", "3"]
# A bound on each `wait`, not an expectation: these runs take well under a minute on an idle
# machine, but a shared 2-core runner under heavy load has needed more than 300 s.
RUN_WAIT_S = "900"


def assert_contiguous(evs: list[dict]) -> None:
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, len(seqs) + 1)), "event seqs must be 1..N with no gap or duplicate"


@pytest.mark.timeout(1200)  # one bounded wait plus the checks
def test_progressive_run_end_to_end(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = ctl(home, *TINY_RUN, "--name", "e2e").stdout.strip()
    assert run_id, "start prints the run id"
    done = ctl(home, "wait", run_id, "--timeout", RUN_WAIT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + daemon.stderr()

    state = json.loads((home / "runs" / run_id / "run.json").read_text())
    assert state["status"] == "completed" and state["run_name"] == "e2e"
    assert state["current_step"] == 12 and state["total_steps"] == 12
    assert [s["stage"] for s in state["stages"]] == ["tiny", "small"]
    assert state["stages"][1]["grown_from"] == "tiny"
    assert state["total_forward"] == 12 and state["best_loss"] <= state["current_loss"]

    rows = wait_for_metrics(home, run_id, 12)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {r["stage"] for r in rows[:6]} == {"tiny"} and {r["stage"] for r in rows[6:]} == {"small"}
    assert set(rows[0]) == {
        "step", "loss", "gradient_norm", "phase", "was_predicted", "prediction_error",
        "step_time_ms", "stage", "lr", "tokens", "run_tokens", "tokens_per_s", "mfu", "ts",
    }
    assert all(r["mfu"] is None for r in rows)  # CPU: no peak to measure against

    evs = events(home)
    assert_contiguous(evs)
    kinds = [e["kind"] for e in evs]
    assert kinds[0] == "run" and evs[0]["status"] == "started" and evs[0]["config"]["steps"] == 6
    assert evs[-1] == {**evs[-1], "kind": "run", "status": "completed"}
    stages = [e for e in evs if e["kind"] == "stage"]
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("tiny", "started"), ("tiny", "completed"), ("small", "started"), ("small", "completed"),
    ]
    # Growth is function-preserving: the grown model starts where the small one ended.
    assert abs(stages[2]["eval_loss"] - stages[1]["eval_loss"]) <= 1e-4 * stages[1]["eval_loss"]
    for done in (s for s in stages if s["status"] == "completed"):  # a Hugging Face folder per stage
        assert done["export_path"] == f"export/{done['stage']}"
        assert (home / "runs" / run_id / done["export_path"] / "config.json").exists()
    # One global batch per step: the preset's 16 x 128 tokens, no accumulation (docs/presets.md).
    assert [(s["micro_batch"], s["accum_steps"], s["tokens_per_step"], s["steps"]) for s in stages[::2]] == [
        (16, 1, 16 * 128, 6), (8, 1, 8 * 128, 6),
    ]
    checkpoints = [e for e in evs if e["kind"] == "checkpoint" and e["status"] == "saved"]
    assert [c["step"] for c in checkpoints] == [3, 6, 9, 12]
    # Retention (latest 3, each stage's last, best eval): step 3 goes once step 12 is durable.
    deleted = [e for e in evs if e["kind"] == "checkpoint" and e["status"] == "deleted"]
    assert [(d["step"], d["reason"]) for d in deleted] == [(3, "retention")]
    assert evs.index(deleted[0]) > evs.index(checkpoints[-1])
    assert not (home / "runs" / run_id / deleted[0]["path"]).exists()
    for c in checkpoints[1:]:
        assert (home / "runs" / run_id / c["path"]).stat().st_size == c["bytes"]

    runs = json.loads(ctl(home, "runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == [run_id]
    assert "completed" in ctl(home, "status", run_id).stdout
    assert ctl(home, "status", "e2e").stdout == ctl(home, "status", run_id[:10]).stdout


@pytest.mark.timeout(2400)  # two bounded waits plus the kill and restart
def test_kill9_daemon_resumes_exactly_once(daemon: Daemon, home: Path) -> None:
    daemon.start()
    steps = 24
    args = ["start", "--start", "tiny", "--end", "tiny", "--steps", str(steps), "--checkpoint-every", "5", "--seed", "7"]
    reference = ctl(home, *args, "--name", "reference").stdout.strip()
    assert ctl(home, "wait", reference, "--timeout", RUN_WAIT_S, check=False).returncode == 0, daemon.stderr()

    run_id = ctl(home, *args, "--name", "crashy").stdout.strip()
    # Kill once the step-10 checkpoint is logged (background writes are logged when durable, a step
    # or two after the step they hold), mid-way between it and the next one.
    follow_until(home, lambda e: e["kind"] == "checkpoint" and e["run_id"] == run_id and e["step"] >= 10, timeout=600)
    follow_until(home, lambda e: e["kind"] == "step" and e["run_id"] == run_id and e["step"] >= 12, timeout=600)
    daemon.kill9()
    daemon.start()  # a fresh daemon on the same home: replays the log, resumes the run
    done = ctl(home, "wait", run_id, "--timeout", RUN_WAIT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    evs = events(home)
    assert_contiguous(evs)
    mine = [e for e in evs if e.get("run_id") == run_id]
    steps_seen = [e["step"] for e in mine if e["kind"] == "step"]
    assert steps_seen == list(range(1, steps + 1)), "each step exactly once in the log"
    resumed = [e for e in mine if e["kind"] == "run" and e["status"] == "resumed"]
    # From the last checkpoint logged before the kill (10, or 15 when it landed before the kill).
    logged = [e["step"] for e in mine[: mine.index(resumed[0])] if e["kind"] == "checkpoint"]
    assert len(resumed) == 1 and logged[-1] in (10, 15) and resumed[0]["resume_step"] == logged[-1]

    expected = [r["loss"] for r in wait_for_metrics(home, reference, steps)]
    got = wait_for_metrics(home, run_id, steps)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for step, (a, b) in enumerate(zip(expected, [r["loss"] for r in got]), start=1):
        assert abs(a - b) <= 1e-5, f"step {step}: {a} vs {b} after resume"
