"""``tritter-record``: writes ``HOME/runs/<id>/metrics.jsonl``, one line per step, exactly once, in order
(and ``eval.jsonl`` / ``samples.jsonl``, one line per periodic eval / sample event, likewise).

It is an ordinary subscriber.  Its cursor (the last seq it has handled) lives in
``HOME/recorder.cursor``; on start it catches up from there.  Each metrics file's own last
line is the final word on what was written, so a recorder killed between writing a line and
saving its cursor never writes that line twice, and a torn last line is cut away.

Built on ``clients/sink_base.py`` (lock, cursor, subscription, signals).  Lines are written
through ``aiofiles`` and fsynced in a worker thread, so a slow disk never stalls the bus.

``metrics.jsonl`` is a projection of the event log, so a file that lost lines is rebuilt from
it, each step exactly once (``rebuild``): at start, for every run whose events the cursor has
passed but whose file ends before its last step (deleted, or truncated, while no recorder ran);
while running, when the file was truncated, deleted or replaced under the open recorder (one
``fstat`` per line) or a step arrives more than one past the file's last line.
"""

from __future__ import annotations

from tritter.clients.sink_signals import stop_quietly_while_starting

# First of all, before the imports below: run as a program, a SIGTERM/SIGINT from here on exits 0
# (docs/operations.md, "Exit status").
stop_quietly_while_starting(__name__, "tritter-record")

import asyncio
import logging
import os
import sys
from pathlib import Path

import aiofiles
import msgspec
from aiofiles.threadpool.binary import AsyncFileIO

from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.sink_base import Sink, SinkSettings, finish, finish_in_thread, sink_main, sink_parser
from tritter.clients.subscription import Subscription
from tritter.clients.target import Target
from tritter.clients.monitoring_cli import RECORD_FILES, monitoring_record
from tritter.protocol.events import AnyEvent, EvalEvent, SampleEvent, StepEvent, metrics_record
from tritter.protocol.control import Runs
from tritter.protocol.home import Layout
from tritter.protocol.wire import ProtocolError

log = logging.getLogger("tritter-record")

_encoder = msgspec.json.Encoder()


class MetricsFile:
    """An append-only ``metrics.jsonl`` that knows the last step it holds.

    Open it with ``await MetricsFile.open(path)`` (creates the file and its folder; cuts a torn
    last line).  Raises ProtocolError when the last whole line is not a metrics record (we
    would not know which steps it already holds) and OSError when the file cannot be opened.
    """

    def __init__(self, path: Path, fd: int, last_step: int, file: AsyncFileIO) -> None:
        self.path = path
        self.fd = fd
        self.last_step = last_step  # global optimizer step of the last line (0 = empty file)
        self.size = os.fstat(fd).st_size  # bytes the file holds by our account
        self._file = file

    def intact(self) -> bool:
        """Whether the file is still as we wrote it: not truncated, not deleted or replaced
        (one ``fstat`` on the open fd: cheap enough for every line)."""
        info = os.fstat(self.fd)
        return info.st_nlink > 0 and info.st_size == self.size

    @classmethod
    async def open(cls, path: Path) -> MetricsFile:
        """Open (or create) ``path`` for appending and read its last step (file I/O in a thread)."""
        fd, last_step = await finish_in_thread(cls._open_and_recover, path)  # it may cut a torn line: not half-done
        try:
            file = await finish(aiofiles.open(fd, "ab", buffering=0))  # the fd is O_APPEND: one write = one line
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, last_step, file)

    @staticmethod
    def _open_and_recover(path: Path) -> tuple[int, int]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            return fd, MetricsFile._recover(fd, path)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _recover(fd: int, path: Path) -> int:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
        cut = tail.rfind(b"\n") + 1
        if cut < len(tail):  # a torn last line from a kill mid-write: drop it, it is rewritten
            keep = size - (len(tail) - cut)
            log.warning("%s: cutting a torn last line (%d bytes)", path, size - keep)
            os.ftruncate(fd, keep)
            tail = tail[:cut]
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            return int(msgspec.json.decode(lines[-1])["step"]) if lines[-1] else 0
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise ProtocolError(f"{path}: last line is not a metrics record; refusing to append") from None

    async def append(self, event: StepEvent) -> bool:
        """Append ``event``'s line unless the file already holds its step; True when written."""
        return await self.append_record(event.step, metrics_record(event))

    async def append_record(self, step: int, record: dict[str, object]) -> bool:
        """Append ``record`` (a JSON object with ``step``) unless the file already holds ``step``."""
        if step <= self.last_step:
            return False
        line = _encoder.encode(record) + b"\n"
        await finish(self._file.write(line))  # one write: one whole line (a signal waits for it)
        self.last_step = step
        self.size += len(line)
        return True

    def sync(self) -> None:
        """fsync the file (blocking: call it from a worker thread)."""
        os.fsync(self.fd)

    async def close(self) -> None:
        """Close the file (also closes ``fd``)."""
        await self._file.close()


def last_step_in(path: Path) -> int:
    """The step of ``path``'s last whole line (0 for a missing or empty file, or an unreadable
    last line, which ``MetricsFile.open`` then handles).  Blocking: call it in a thread."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
    except FileNotFoundError:
        return 0
    lines = tail[: tail.rfind(b"\n") + 1].rstrip(b"\n").rsplit(b"\n", 1)
    try:
        return int(msgspec.json.decode(lines[-1])["step"]) if lines[-1] else 0
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return 0


class Recorder(Sink[SinkSettings]):
    """The metrics recorder sink: one ``metrics.jsonl`` line per ``step`` event, exactly once."""

    name = "tritter-record"
    lock_file = "recorder.lock"
    cursor_file = "recorder.cursor"
    redo_note = "lines are still written once"

    def __init__(self, layout: Layout, settings: SinkSettings | None = None, source: Target | None = None) -> None:
        super().__init__(layout, settings, source)
        self.files: dict[str, MetricsFile] = {}  # run id -> its open metrics.jsonl
        self._gone: set[str] = set()  # keys of files deleted/replaced under us: reopen (and rebuild)

    def describe(self) -> str:
        """The start-up log line: where the metrics files are written."""
        return f"recording metrics under {self.layout.runs}"

    # -- events: what the recorder writes --------------------------------------------------------
    async def on_event(self, event: AnyEvent) -> None:
        """A ``step`` event becomes one line of ``runs/<run_id>/metrics.jsonl``, an ``eval`` / ``sample``
        event one line of ``eval.jsonl`` / ``samples.jsonl`` (docs/monitoring.md); others are skipped."""
        if isinstance(event, StepEvent):
            metrics = await self.metrics_file(event.run_id)
            if not metrics.intact():  # truncated, deleted or replaced under us: take what is there now
                log.warning("%s was truncated, deleted or replaced; reopening it", metrics.path)
                self._gone.add(event.run_id)
                metrics = await self.metrics_file(event.run_id)
            if event.step > metrics.last_step + 1:  # lines are missing: steps are contiguous in the log
                await self.rebuild(event.run_id, upto_seq=event.seq - 1)
            await metrics.append(event)
        elif isinstance(event, EvalEvent | SampleEvent):  # eval.jsonl / samples.jsonl, also once per step
            jsonl = await self.metrics_file(event.run_id, RECORD_FILES[event.kind])
            await jsonl.append_record(event.step, monitoring_record(event))

    async def metrics_file(self, run_id: str, name: str = "metrics.jsonl") -> MetricsFile:
        """The open ``metrics.jsonl`` (or ``name``, e.g. eval.jsonl) of ``run_id`` (opened, and recovered, on first use)."""
        key = run_id if name == "metrics.jsonl" else f"{run_id}/{name}"
        if key in self._gone:  # deleted or replaced by someone: start a fresh file (rebuilt by the caller)
            self._gone.discard(key)
            old = self.files.pop(key, None)
            if old is not None:
                await old.close()
        metrics = self.files.get(key)
        if metrics is None:
            metrics = self.files[key] = await MetricsFile.open(self.layout.run_dir(run_id) / name)
        return metrics

    # -- rebuilding from the log ---------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild the metrics.jsonl of runs whose events the cursor has passed but whose file
        ends before the run's last step (deleted or truncated while no recorder ran).

        Asks the daemon for its runs (their last step and last seq); a daemon that is not there
        yet skips this check (a later step still finds a gap and rebuilds then).
        """
        if self.source is None:
            return
        connection = Connection(self.source)
        try:
            runs = (await connection.request(Runs())).runs
        except (DaemonUnavailable, RequestFailed, ProtocolError) as error:
            log.info("cannot check metrics files against the daemon's runs now (%s)", error)
            return
        finally:
            await connection.close()
        for state in runs:
            if state.current_step <= 0 or state.last_seq > self.cursor:
                continue  # no step yet, or the catch-up ahead still brings its steps (gaps are found then)
            path = self.layout.run_dir(state.run_id) / "metrics.jsonl"
            if await asyncio.to_thread(last_step_in, path) < state.current_step:
                await self.rebuild(state.run_id, upto_seq=self.cursor)

    async def rebuild(self, run_id: str, upto_seq: int) -> int:
        """Append to ``run_id``'s metrics.jsonl every step it lacks, from the daemon's log up to
        ``upto_seq``; returns how many lines were written.

        Re-reads the log from seq 1 (a catch-up, follow=False): steps the file already holds are
        skipped by ``MetricsFile.append``, so each step is written exactly once, in order.
        """
        metrics = await self.metrics_file(run_id)
        if self.source is None:
            log.error("%s: lines after step %d are missing and there is no daemon to rebuild them from",
                      metrics.path, metrics.last_step)
            return 0
        log.warning("%s ends at step %d, before the event log does: rebuilding the missing lines from the log",
                    metrics.path, metrics.last_step)
        written = 0
        replay = Subscription(self.source, since=1, follow=False)
        try:
            async for event in replay:
                if event.seq > upto_seq:
                    break
                if isinstance(event, StepEvent) and event.run_id == run_id:
                    written += await metrics.append(event)
        finally:
            await replay.close()
        log.warning("%s: rebuilt %d lines from the event log (now up to step %d)", metrics.path, written, metrics.last_step)
        return written

    # -- durability ------------------------------------------------------------------------------
    def save_progress(self) -> None:
        """fsync every open metrics file, then save the cursor (blocking); OSError when the disk refuses."""
        for metrics in list(self.files.values()):
            metrics.sync()  # lines before the cursor must be on disk before the cursor is
        super().save_progress()

    async def close(self) -> None:
        """Close every open metrics file."""
        for metrics in self.files.values():
            await metrics.close()
        self.files.clear()


def main(argv: list[str] | None = None) -> int:
    """``tritter-record [--home DIR | --connect URL ...] [--runs-home DIR]``; returns the exit status."""
    parser = sink_parser(Recorder, "Write metrics.jsonl for every run from the event bus.",
                         "where to write runs/<id>/metrics.jsonl")
    return sink_main(Recorder, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
