"""The event log: contiguous seqs, replay, and recovery from torn or corrupt tails."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tritter.daemon.eventlog import MAGIC, EventLog
from tritter.protocol.events import RunEvent, StepEvent
from tritter.protocol.state import fold
from tritter.protocol.wire import ProtocolError, decode_event


def step(n: int, run_id: str = "r") -> StepEvent:
    return StepEvent(
        run_id=run_id, step=n, loss=10.0 / n, gradient_norm=1.0, phase="full", was_predicted=False,
        prediction_error=None, step_time_ms=1.0, stage="tiny", lr=1e-3, tokens=n * 10, tokens_per_s=5.0,
    )


def fill(path: Path, steps: int) -> None:
    log = EventLog(path)
    log.append(RunEvent(run_id="r", status="started", run_name="x"))
    for n in range(1, steps + 1):
        log.append(step(n))
    log.close()


def test_seq_is_contiguous_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    fill(path, 5)
    log = EventLog(path)
    assert log.head == 6
    assert [e.seq for e in log.replay()] == [1, 2, 3, 4, 5, 6]
    assert log.append(step(6)) and log.head == 7  # continues, never reuses
    assert [decode_event(p).seq for p in log.read_since(5, 10)] == [5, 6, 7]
    assert log.read_since(8, 10) == [] and [decode_event(p).seq for p in log.read_since(1, 2)] == [1, 2]


def test_fold_of_replay_is_the_state(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    fill(path, 4)
    runs: dict = {}
    for event in EventLog(path).replay():
        fold(runs, event)
    assert runs["r"].current_step == 4 and runs["r"].total_forward == 4 and runs["r"].best_loss == 2.5


@pytest.mark.parametrize("damage", ["torn_header", "torn_payload", "bit_flip", "garbage"])
def test_damaged_tail_is_cut_back_loudly(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.log"
    fill(path, 10)
    good_size = path.stat().st_size
    data = bytearray(path.read_bytes())
    if damage == "torn_header":
        data = data + b"\x00\x00"
    elif damage == "torn_payload":
        data = data[:-5]
    elif damage == "bit_flip":
        data[-3] ^= 0x10
    else:
        data = data + os.urandom(300)
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        log = EventLog(path)
    expected_head = 11 if damage in ("torn_header", "garbage") else 10
    assert log.head == expected_head
    assert [e.seq for e in log.replay()] == list(range(1, expected_head + 1))
    assert "EVENT LOG DAMAGED" in caplog.text
    kept = list(tmp_path.glob("events.log.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size > 0  # the cut bytes are saved, not thrown away
    assert log.append(step(99)) and log.head == expected_head + 1
    if damage in ("torn_header", "garbage"):
        assert path.stat().st_size > good_size


def test_not_a_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"hello world, not a log")
    with pytest.raises(ProtocolError, match="not a tritter event log"):
        EventLog(path)
    assert path.read_bytes() == b"hello world, not a log"


def test_empty_file_gets_a_header(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    log = EventLog(path)
    assert log.head == 0 and path.read_bytes() == MAGIC
