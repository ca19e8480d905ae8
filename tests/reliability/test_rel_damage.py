"""(c) torn / bit-flipped tails of events.log and damaged newest checkpoints, done while tritterd is
down: the daemon cuts back to the last good record, the worker falls back to the previous
checkpoint, both say so loudly, and the run still completes with the exact loss curve."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import Daemon, events
from reliability_helpers import (
    TEST_TIMEOUT_S,
    TINY_RUN,
    Follower,
    assert_exact_run,
    flip_byte,
    log_records,
    reference_losses,
    report,
    start_run,
    truncate,
    wait_done,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

LOG_WARNING = "EVENT LOG DAMAGED"
CKPT_WARNING = "CHECKPOINT DAMAGED"


def newest_checkpoint(home: Path, run_id: str) -> Path:
    files = sorted((home / "runs" / run_id / "checkpoints").glob("step-*.safetensors"))
    assert files, "no checkpoint yet"
    return files[-1]


def last_record_of(log: Path, kind: str) -> tuple[int, int, dict]:
    return [r for r in log_records(log) if r[2]["kind"] == kind][-1]


def test_damaged_log_and_checkpoint_tails_recover_exactly(daemon: Daemon, home: Path) -> None:
    began = time.monotonic()
    reference = reference_losses(TINY_RUN)
    log = home / "events.log"
    daemon.start()
    run_id = start_run(home, TINY_RUN, "damage")

    def step_at_least(n: int):  # type: ignore[no-untyped-def]
        return lambda e: e.get("run_id") == run_id and e["kind"] == "step" and e["step"] >= n

    def checkpoint_at(n: int):  # type: ignore[no-untyped-def]
        return lambda e: e.get("run_id") == run_id and e["kind"] == "checkpoint" and e["step"] == n

    # Each damage returns what it did and the seq of the first record it spoiled: the daemon cuts
    # the log back to just before it, so the next events it logs start at that seq.
    def torn_last_header() -> tuple[str, int]:
        offset, _, event = log_records(log)[-1]
        truncate(log, offset + 5)  # the crash tore the last record's 8-byte header
        return f"log torn inside the header of seq {event['seq']} ({event['kind']})", event["seq"]

    def cut_inside_checkpoint_event() -> tuple[str, int]:
        offset, length, event = last_record_of(log, "checkpoint")
        truncate(log, offset + length // 2)
        return f"log torn inside the last checkpoint event (seq {event['seq']}, step {event['step']})", event["seq"]

    def flip_in_checkpoint_event_and_file() -> tuple[str, int]:
        offset, length, event = last_record_of(log, "checkpoint")
        flip_byte(log, offset + length - 3)
        path = newest_checkpoint(home, run_id)
        flip_byte(path, path.stat().st_size // 2)
        return f"bit flip in the last checkpoint event (seq {event['seq']}) and in {path.name}", event["seq"]

    def flip_last_record_and_truncate_checkpoint() -> tuple[str, int]:
        offset, length, event = log_records(log)[-1]
        flip_byte(log, offset + length - 1)
        path = newest_checkpoint(home, run_id)
        truncate(path, path.stat().st_size // 2)
        return (f"bit flip in the last record (seq {event['seq']}, {event['kind']}) and {path.name} truncated to half",
                event["seq"])

    rounds = [
        (step_at_least(3), torn_last_header, False),
        (checkpoint_at(4), cut_inside_checkpoint_event, False),
        (checkpoint_at(6), flip_in_checkpoint_event_and_file, True),
        (step_at_least(7), flip_last_record_and_truncate_checkpoint, True),
    ]
    done = []
    since = 1  # the first seq the running daemon instance logged (or will log)
    for trigger, damage, checkpoint_damaged in rounds:
        # Everything from `since` on happened after the last restart: a trigger met before this
        # follower started (say the checkpoint was logged while the daemon came up) is still seen.
        follower = Follower(home, since=since)
        try:
            follower.until(trigger, timeout=420)
        finally:
            follower.close()
        daemon.kill9()
        what, since = damage()
        before_log = daemon.stderr().count(LOG_WARNING)
        before_ckpt = daemon.stderr().count(CKPT_WARNING)
        daemon.start()
        assert daemon.stderr().count(LOG_WARNING) == before_log + 1, f"{what}: no '{LOG_WARNING}' warning"
        if checkpoint_damaged:  # the worker's warning reaches the daemon's stderr once it has looked
            deadline = time.monotonic() + 300
            while daemon.stderr().count(CKPT_WARNING) <= before_ckpt and time.monotonic() < deadline:
                time.sleep(0.2)
            assert daemon.stderr().count(CKPT_WARNING) == before_ckpt + 1, f"{what}: no '{CKPT_WARNING}' warning"
        done.append(what)
    wait_done(home, run_id, daemon)
    figures = assert_exact_run(home, run_id, TINY_RUN, reference)
    corrupt = sorted(home.glob("events.log.corrupt-*"))
    assert len(corrupt) == len(rounds), "every cut tail is kept beside the log"
    resumes = [e for e in events(home) if e.get("run_id") == run_id and e["kind"] == "run" and e["status"] == "resumed"]
    # Each fallback past a damaged checkpoint is the worker's own `resumed`, saying which file it skipped.
    fallbacks = [e for e in resumes if ".safetensors is damaged (" in e.get("reason", "")]
    assert len(fallbacks) == sum(1 for *_, damaged in rounds if damaged), resumes
    report("c_damaged_tails", damages=done, recoveries=len(rounds), resumes_logged=len(resumes),
           duration_s=round(time.monotonic() - began, 1), **figures)
