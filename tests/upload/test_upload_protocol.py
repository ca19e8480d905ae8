"""Protocol additions for uploads: the ``upload`` event, its fold, and the Upload/Report requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from conftest import Daemon
from test_uploader import RUN_ID, seed_run

from tritter.clients.connection import Connection, RequestFailed
from tritter.clients.upload import backoff_delay, wants_upload
from tritter.protocol.config import RunConfig
from tritter.protocol.control import AnyRequest, Report, Upload
from tritter.protocol.events import EVENT_KINDS, RunEvent, StageEvent, UploadEvent
from tritter.protocol.home import Layout
from tritter.protocol.state import RunState, StageState, fold
from tritter.protocol.wire import decode_as, decode_event, encode, encode_json


def test_upload_event_round_trips_and_is_a_kind() -> None:
    event = UploadEvent(seq=7, ts=1.5, run_id="r", stage="tiny", status="failed", repo="a/b", revision="tiny",
                        attempt=2, error="hub error HTTP 500", will_retry=True)
    assert "upload" in EVENT_KINDS and event.kind == "upload"
    assert decode_event(encode(event)) == event
    assert b'"kind":"upload"' in encode_json(event)
    # A minimal upload event (only what is required) decodes with defaults.
    minimal = msgspec.msgpack.encode({"kind": "upload", "seq": 1, "run_id": "r", "stage": "tiny", "status": "requested"})
    assert decode_event(minimal).attempt == 0


def test_old_messages_still_decode() -> None:
    # A StageState / run.json written before the upload fields existed.
    old = {"stage": "tiny", "index": 0, "status": "completed", "params": 1, "start_step": 0}
    state = msgspec.json.decode(msgspec.json.encode(old), type=StageState)
    assert state.upload_status is None and state.upload_url == ""
    old_event = StageEvent(seq=3, run_id="r", status="completed", stage="tiny", index=0, step=4, params=1)
    assert decode_event(encode(old_event)) == old_event
    assert decode_as(encode(Upload(run="r")), AnyRequest).stage is None  # type: ignore[arg-type]
    report = decode_as(encode(Report(event=UploadEvent(run_id="r", stage="tiny", status="completed"))), AnyRequest)  # type: ignore[arg-type]
    assert isinstance(report, Report) and report.event.status == "completed"


def _run(upload: bool = True) -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    config = RunConfig(start="tiny", end="tiny", upload=upload, hf_user="alice")
    fold(runs, RunEvent(seq=1, run_id="r", status="started", run_name="n", config=config))
    fold(runs, StageEvent(seq=2, run_id="r", status="started", stage="tiny", index=0, step=0, params=1))
    return runs


def test_fold_tracks_upload_state() -> None:
    runs = _run()
    stage = runs["r"].stages[0]
    assert not wants_upload(runs["r"], stage)  # not completed yet
    fold(runs, StageEvent(seq=3, run_id="r", status="completed", stage="tiny", index=0, step=4, params=1,
                          export_path="export/tiny"))
    assert wants_upload(runs["r"], stage)  # --upload: completed stages go up
    steps = [
        (UploadEvent(seq=4, run_id="r", stage="tiny", status="started", repo="alice/n", revision="tiny", attempt=1), True),
        (UploadEvent(seq=5, run_id="r", stage="tiny", status="failed", attempt=1, error="x", will_retry=True), True),
        (UploadEvent(seq=6, run_id="r", stage="tiny", status="completed", attempt=2, url="u", commit="c"), False),
        (UploadEvent(seq=7, run_id="r", stage="tiny", status="requested"), True),
        (UploadEvent(seq=8, run_id="r", stage="tiny", status="failed", attempt=1, error="token rejected"), False),
    ]
    for event, wanted in steps:
        fold(runs, event)
        assert stage.upload_status == event.status and stage.upload_seq == event.seq
        assert wants_upload(runs["r"], stage) is wanted, event
    assert stage.upload_repo == "alice/n" and stage.upload_url == "u" and stage.upload_error == "token rejected"
    # An upload for an unknown stage changes nothing.
    fold(runs, UploadEvent(seq=9, run_id="r", stage="small", status="completed"))
    assert [s.stage for s in runs["r"].stages] == ["tiny"]


def test_without_upload_flag_only_requests_upload() -> None:
    runs = _run(upload=False)
    fold(runs, StageEvent(seq=3, run_id="r", status="completed", stage="tiny", index=0, step=4, params=1))
    stage = runs["r"].stages[0]
    assert not wants_upload(runs["r"], stage)
    fold(runs, UploadEvent(seq=4, run_id="r", stage="tiny", status="requested"))
    assert wants_upload(runs["r"], stage)


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_delay(a, 2.0, 60.0) for a in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_report_is_validated(home: Path, daemon: Daemon) -> None:
    seed_run(home, export=False)
    daemon.start()

    async def go() -> None:
        conn = Connection(Layout(home))
        try:
            with pytest.raises(RequestFailed, match="no run"):
                await conn.request(Report(event=UploadEvent(run_id="nope", stage="tiny", status="completed")))
            with pytest.raises(RequestFailed, match="has not completed"):
                await conn.request(Report(event=UploadEvent(run_id=RUN_ID, stage="small", status="completed")))
            with pytest.raises(RequestFailed, match="cannot request"):
                await conn.request(Report(event=UploadEvent(run_id=RUN_ID, stage="tiny", status="requested")))
            reply = await conn.request(Report(event=UploadEvent(run_id=RUN_ID, stage="tiny", status="started", seq=999, attempt=1)))
            assert reply.ok and reply.head == 5  # numbered by the log, whatever the sink sent
            state = (await conn.request(Upload(run=RUN_ID))).run_id
            assert state == RUN_ID
        finally:
            await conn.close()

    asyncio.run(go())
