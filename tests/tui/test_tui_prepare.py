"""The monitor's detail view and tritterctl show corpus preparation (``prepare`` events, issue 13)."""

from __future__ import annotations

from tritter.clients.ctl import format_event, format_status
from tritter.clients.tui.model import Monitor
from tritter.clients.tui.render import detail, plain
from tritter.protocol.config import RunConfig
from tritter.protocol.events import PrepareEvent, RunEvent

RUN = "20260101-120000-abcd"


def _monitor(*events: PrepareEvent) -> Monitor:
    monitor = Monitor()
    monitor.apply(RunEvent(seq=1, ts=1.0, run_id=RUN, status="started", run_name="web", config=RunConfig()))
    for i, event in enumerate(events, start=2):
        event.seq, event.ts, event.run_id = i, float(i), RUN
        monitor.apply(event)
    return monitor


def test_tokenizing_progress_then_ready_identity() -> None:
    tokenizing = PrepareEvent(stage="tokenizing", bytes_done=34_000_000, bytes_total=100_000_000, tokens=8_000_000,
                              mb_per_s=12.1, eta_s=190.0)
    monitor = _monitor(tokenizing)
    state = monitor.runs[RUN]
    assert "data tokenizing 34% · 12.1 MB/s · ETA 3m10s · 8,000,000 tokens" in plain(detail(state, None, 120, 40))
    assert "data       tokenizing 34% · 12.1 MB/s · ETA 3m10s" in format_status(state)
    assert format_event(tokenizing).endswith("prepare    tokenizing 34% · 12.1 MB/s · ETA 3m10s · 8,000,000 tokens")
    ready = PrepareEvent(stage="ready", bytes_done=100_000_000, bytes_total=100_000_000, tokens=25_000_000,
                         replaced=2, replaced_at="/data/a.jsonl: line 7", corpus_digest="3f2a91c0d4e1aa", tokenizer_digest="9c1e00",
                         vocab_size=32_064)
    monitor = _monitor(tokenizing, ready)
    out = plain(detail(monitor.runs[RUN], None, 200, 40))
    assert ("data ready · 25,000,000 tokens · vocab 32,064 · corpus 3f2a91c0d4e1  tokenizer 9c1e00 · "
            "2 invalid characters replaced (first: /data/a.jsonl: line 7)") in out
