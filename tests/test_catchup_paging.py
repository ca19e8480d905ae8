"""The real tritterd's catch-up across several pages (tests/test_subscription.py uses a stand-in).

The home's event log is written before tritterd starts, with the daemon's own ``EventLog``
writer: a finished run with 5,000 step events, i.e. three catch-up pages of ``CATCHUP_BATCH``
(2,000).  No training is needed; the live part is an ``upload requested`` event, which the
daemon logs at once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import zmq.asyncio

from conftest import Daemon, EventStream, ctl
from tritter.clients.connection import Connection
from tritter.daemon.eventlog import EventLog
from tritter.protocol.config import RunConfig
from tritter.protocol.control import CATCHUP_BATCH, Catchup
from tritter.protocol.events import RunEvent, StageEvent, StepEvent
from tritter.protocol.home import Layout
from tritter.protocol.wire import decode_event

RUN_ID = "20260101-000000-page"
STEPS = 4_997  # + run started, stage started/completed, run completed = 5,001 events


def seed_log(home: Path) -> int:
    """Write the finished run into HOME/events.log; the head seq."""
    layout = Layout(home)
    layout.runs.mkdir(parents=True, exist_ok=True)
    log = EventLog(layout.log)
    config = RunConfig(name="paged", start="tiny", end="tiny", steps=STEPS, hf_user="alice")
    log.append(RunEvent(run_id=RUN_ID, status="started", run_name="paged", config=config))
    log.append(StageEvent(run_id=RUN_ID, status="started", stage="tiny", index=0, step=0, params=1))
    for n in range(1, STEPS + 1):
        log.append(StepEvent(run_id=RUN_ID, step=n, loss=10.0 / n, gradient_norm=1.0, phase="full",
                             was_predicted=False, prediction_error=None, step_time_ms=1.0, stage="tiny",
                             lr=1e-3, tokens=64 * n, tokens_per_s=1.0))
    log.append(StageEvent(run_id=RUN_ID, status="completed", stage="tiny", index=0, step=STEPS, params=1))
    log.append(RunEvent(run_id=RUN_ID, status="completed"))
    head = log.head
    log.close()
    return head


def check_history(lines: list[dict], first: int, head: int) -> None:
    """``lines`` are the events first..head exactly, each the one written (step n has seq n + 2)."""
    assert [e["seq"] for e in lines] == list(range(first, head + 1)), "a gap, a duplicate or a missing page"
    for e in lines:
        if e["kind"] == "step":
            assert e["step"] == e["seq"] - 2 and e["loss"] == pytest.approx(10.0 / e["step"])


def test_real_daemon_pages_catch_up_and_then_follows_live(home: Path) -> None:
    head = seed_log(home)
    assert head == STEPS + 4 > 2 * CATCHUP_BATCH
    daemon = Daemon(home, ["--no-recorder"]).start()
    try:
        # One Catchup request is one bounded page, straight from the log.
        async def pages() -> list[list[int]]:
            ctx = zmq.asyncio.Context()
            conn = Connection(Layout(home), timeout_s=60.0, ctx=ctx)
            try:
                got = []
                for since in (1, 1 + CATCHUP_BATCH, 1 + 2 * CATCHUP_BATCH):
                    reply = await conn.request(Catchup(since=since))
                    got.append([decode_event(bytes(raw)).seq for raw in reply.events])  # type: ignore[arg-type]
                return got
            finally:
                await conn.close()
                ctx.destroy(linger=0)

        first, second, third = asyncio.run(pages())
        assert first == list(range(1, CATCHUP_BATCH + 1))
        assert second == list(range(CATCHUP_BATCH + 1, 2 * CATCHUP_BATCH + 1))
        assert third == list(range(2 * CATCHUP_BATCH + 1, head + 1))

        # tritterctl events pages through the whole log, from seq 1 and from inside a page.
        everything = [json.loads(line) for line in ctl(home, "events", "--json").stdout.splitlines()]
        check_history(everything, 1, head)
        assert everything[0]["config"]["steps"] == STEPS and everything[-1]["status"] == "completed"
        tail = [json.loads(line) for line in ctl(home, "events", "--since", "1999", "--json").stdout.splitlines()]
        check_history(tail, 1999, head)

        # A follower catches up across the pages, then gets the live stream with no gap.
        stream = EventStream(home, since=1)
        try:
            stream.until(lambda e: e["seq"] == head, timeout=120)
            ctl(home, "upload", RUN_ID, "--stage", "tiny")  # logged and published at once
            live = stream.until(lambda e: e["kind"] == "upload", timeout=120)
            check_history(stream.seen, 1, head + 1)
            assert live["seq"] == head + 1 and live["status"] == "requested"
        finally:
            stream.close()
    finally:
        daemon.stop()
