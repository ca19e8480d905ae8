"""``tritter-record``: writes ``HOME/runs/<id>/metrics.jsonl``, one line per step, exactly once, in order.

It is an ordinary subscriber.  Its cursor (the last seq it has handled) lives in
``HOME/recorder.cursor``; on start it catches up from there.  Each metrics file's own last
line is the final word on what was written, so a recorder killed between writing a line and
saving its cursor never writes that line twice, and a torn last line is cut away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from tritter.clients.sink_base import hold_lock
from tritter.formats.files import load_cursor, save_cursor
from tritter.clients.subscription import Subscription
from tritter.clients.target import Target, add_target_arguments, target_from_args
from tritter.protocol.events import StepEvent, metrics_record
from tritter.protocol.home import Layout, resolve_home
from tritter.protocol.wire import ProtocolError

log = logging.getLogger("tritter-record")

CURSOR_SAVE_INTERVAL_S = 1.0
_encoder = msgspec.json.Encoder()


class MetricsFile:
    """An append-only metrics.jsonl that knows the last step it holds."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.last_step = self._recover()

    def _recover(self) -> int:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return 0
        tail = os.pread(self.fd, min(size, 1 << 16), max(0, size - (1 << 16)))
        cut = tail.rfind(b"\n") + 1
        if cut < len(tail):  # a torn last line from a kill mid-write: drop it, it is rewritten
            keep = size - (len(tail) - cut)
            log.warning("%s: cutting a torn last line (%d bytes)", self.path, size - keep)
            os.ftruncate(self.fd, keep)
            tail = tail[:cut]
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            return int(msgspec.json.decode(lines[-1])["step"]) if lines[-1] else 0
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise ProtocolError(f"{self.path}: last line is not a metrics record; refusing to append") from None

    def append(self, event: StepEvent) -> bool:
        if event.step <= self.last_step:
            return False
        os.write(self.fd, _encoder.encode(metrics_record(event)) + b"\n")  # one write: one whole line
        self.last_step = event.step
        return True

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class Recorder:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.cursor_path = layout.home / "recorder.cursor"
        self.files: dict[str, MetricsFile] = {}
        self.cursor = load_cursor(self.cursor_path, "lines are still written once")
        self._saved_at = time.monotonic()
        self._saved_cursor = self.cursor

    def save_cursor(self) -> None:
        if self.cursor == self._saved_cursor:
            return
        for metrics in self.files.values():
            metrics.sync()  # lines before the cursor must be on disk before the cursor is
        save_cursor(self.cursor_path, self.cursor)
        self._saved_cursor = self.cursor
        self._saved_at = time.monotonic()

    def handle(self, event: object) -> None:
        if isinstance(event, StepEvent):
            metrics = self.files.get(event.run_id)
            if metrics is None:
                metrics = self.files[event.run_id] = MetricsFile(self.layout.run_dir(event.run_id) / "metrics.jsonl")
            metrics.append(event)
        self.cursor = event.seq  # type: ignore[attr-defined]
        if time.monotonic() - self._saved_at >= CURSOR_SAVE_INTERVAL_S:
            self.save_cursor()

    async def run(self, subscription: Subscription) -> None:
        try:
            async for event in subscription:
                self.handle(event)
        finally:
            self.save_cursor()
            await subscription.close()

    def close(self) -> None:
        for metrics in self.files.values():
            metrics.close()


def _on_state(state: str) -> None:
    log.info("bus: %s", state)


async def record(layout: Layout, source: Target) -> None:
    lock = await hold_lock(layout, "recorder.lock", "tritter-record")
    recorder = Recorder(layout)
    log.info("recording metrics of %s under %s from seq %d", source.where, layout.runs, recorder.cursor + 1)
    subscription = Subscription(source, since=recorder.cursor + 1, on_state=_on_state)
    task = asyncio.ensure_future(recorder.run(subscription))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    recorder.close()
    os.close(lock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tritter-record", description="Write metrics.jsonl for every run from the event bus.")
    add_target_arguments(parser)
    parser.add_argument("--runs-home", metavar="DIR", help="with --connect: where to write runs/<id>/metrics.jsonl (default: $TRITTER_HOME or ~/.local/share/tritter)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tritter-record %(levelname)s %(message)s")
    try:
        source = target_from_args(args)
        layout = Layout(source.home or resolve_home(args.runs_home))
        asyncio.run(record(layout, source))
    except (ProtocolError, OSError, ValueError) as error:
        print(f"tritter-record: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
