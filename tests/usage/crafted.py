"""Homes with a hand-written event log, so a real tritterd starts with runs in known states
without training anything (fast), and a stand-in worker that speaks the worker protocol.

The log is written with the daemon's own ``EventLog`` (the file format is the daemon's);
nothing else about the daemon is bypassed: tests then drive it through tritterctl.
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from tritter.daemon.eventlog import EventLog
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AnyEvent, RunEvent, StageEvent
from tritter.protocol.home import Layout
from tritter.protocol.wire import encode

TINY = RunConfig(start="tiny", end="tiny", steps=4)


def write_log(home: Path, events: list[AnyEvent]) -> None:
    """Append ``events`` (seq and, when unset, ts filled in) to ``home``'s event log."""
    home.mkdir(parents=True, exist_ok=True)
    log = EventLog(Layout(home).log)
    try:
        for event in events:
            log.append(event)
    finally:
        log.close()


def run_events(run_id: str, name: str, status: str, config: RunConfig = TINY, reason: str = "",
               ts: float | None = None) -> list[AnyEvent]:
    """A run that started (with ``config``) and then reached ``status`` (``running``: no second event)."""
    t = ts if ts is not None else time.time()
    out: list[AnyEvent] = [RunEvent(run_id=run_id, status="started", run_name=name, config=config, ts=t)]
    out.append(StageEvent(run_id=run_id, status="started", stage=config.start, index=0, step=0, params=1, ts=t))
    if status != "running":
        out.append(RunEvent(run_id=run_id, status=status, reason=reason, ts=t + 1))  # type: ignore[arg-type]
    return out


class FakeWorker:
    """A DEALER on HOME's worker socket with identity = the run id, as a training worker is.

    The daemon accepts its events like a real worker's (they go through ``Tritterd.record``).
    """

    def __init__(self, home: Path, run_id: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, run_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(Layout(home).worker_endpoint)

    def send(self, event: AnyEvent) -> None:
        self.sock.send_multipart([b"event", encode(event)])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
