"""The append-only event log: the daemon's single source of truth.

File format (documented in docs/eventlog.md): an 8-byte magic, then one record per event:
``>II`` (payload length, CRC-32 of the payload) followed by the msgpack-encoded event.
Record *n* holds the event with ``seq == n``, so seq is contiguous by construction and a
restart continues from the last good record: a seq is never reused.

Durability: run, stage, checkpoint and upload events are fsynced before they are published; the
other kinds (step, phase, ...) are fsynced in groups by ``sync_if_due`` (at most ``group_sync_s`` late).
On open, a torn or corrupt tail is cut back to the last good record; the cut bytes are kept
beside the log (``events.log.corrupt-<time>``) and a loud warning is logged.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path

from tritter.protocol.events import AnyEvent
from tritter.protocol.wire import ProtocolError, decode_event, encode

log = logging.getLogger("tritterd.log")

MAGIC = b"TRTLOG1\n"
_HEADER = struct.Struct(">II")
MAX_RECORD = 16 * 1024 * 1024  # larger lengths can only come from corruption
_DURABLE_KINDS = frozenset({"run", "stage", "checkpoint", "upload"})


class EventLog:
    """The append-only event log file at ``path`` (created, mode 0600): records of ``>II`` (length, CRC-32)
    + msgpack event, record n holding seq n.  Opening cuts a torn or corrupt tail (kept beside it);
    ``group_sync_s``: the most seconds a non-durable event waits for its fsync.
    Raises ProtocolError when the file is not an event log (bad magic), OSError when it cannot be opened.
    """

    def __init__(self, path: Path, group_sync_s: float = 1.0) -> None:
        self.path = path
        self.group_sync_s = group_sync_s
        self._offsets = array("q")  # _offsets[seq - 1] = file offset of that record's header
        self._dirty_since: float | None = None
        self.last_sync_s: float | None = None  # seconds the latest fsync took
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = fd
        self._end = self._scan()

    @property
    def head(self) -> int:
        """The newest seq in the log (0 when empty)."""
        return len(self._offsets)

    # -- recovery -------------------------------------------------------------------------
    def _scan(self) -> int:
        size = os.fstat(self._fd).st_size
        if size == 0:
            os.pwrite(self._fd, MAGIC, 0)
            os.fsync(self._fd)
            return len(MAGIC)
        if os.pread(self._fd, len(MAGIC), 0) != MAGIC:
            raise ProtocolError(f"{self.path} is not a tritter event log (bad magic); refusing to touch it")
        offset = len(MAGIC)
        while offset < size:
            reason = self._check_record(offset, size)
            if reason:
                self._cut_tail(offset, size, reason)
                return offset
            length, _ = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
            self._offsets.append(offset)
            offset += _HEADER.size + length
        return offset

    def _check_record(self, offset: int, size: int) -> str | None:
        if offset + _HEADER.size > size:
            return "torn record header"
        length, crc = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
        if length > MAX_RECORD or offset + _HEADER.size + length > size:
            return "torn record"
        payload = os.pread(self._fd, length, offset + _HEADER.size)
        if zlib.crc32(payload) != crc:
            return "checksum mismatch"
        try:
            event = decode_event(payload)
        except ProtocolError as error:
            return f"undecodable record ({error})"
        if event.seq != self.head + 1:
            return f"record holds seq {event.seq}, expected {self.head + 1}"
        return None

    def _cut_tail(self, offset: int, size: int, reason: str) -> None:
        keep = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        with open(keep, "wb") as out:
            out.write(os.pread(self._fd, size - offset, offset))
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        log.warning(
            "EVENT LOG DAMAGED: %s at byte %d of %s (after seq %d). Cut %d bytes back to the last good "
            "record; the cut bytes are saved in %s",
            reason,
            offset,
            self.path,
            self.head,
            size - offset,
            keep,
        )

    # -- reading --------------------------------------------------------------------------
    def payload(self, seq: int) -> bytes:
        """The msgpack encoding of the event with ``seq``, which must be 1..head (past the head: IndexError)."""
        offset = self._offsets[seq - 1]
        length, _ = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
        return os.pread(self._fd, length, offset + _HEADER.size)

    def read_since(self, since: int, limit: int) -> list[bytes]:
        """Encoded events with seq in [since, since + limit), straight from the file."""
        first = max(since, 1)
        last = min(self.head, first + limit - 1)
        if last < first:
            return []
        start = self._offsets[first - 1]
        end = self._offsets[last] if last < self.head else self._end
        blob = os.pread(self._fd, end - start, start)
        out: list[bytes] = []
        pos = 0
        while pos < len(blob):
            length, _ = _HEADER.unpack_from(blob, pos)
            out.append(blob[pos + _HEADER.size : pos + _HEADER.size + length])
            pos += _HEADER.size + length
        return out

    def replay(self, chunk: int = 10_000) -> Iterator[AnyEvent]:
        """Every event of the log, decoded, in seq order, read ``chunk`` records at a time; ProtocolError on an
        undecodable one."""
        for first in range(1, self.head + 1, chunk):
            for payload in self.read_since(first, chunk):
                yield decode_event(payload)

    # -- writing --------------------------------------------------------------------------
    def append(self, event: AnyEvent) -> bytes:
        """Give ``event`` the next seq (and a ts if it has none), write it, return its encoding."""
        event.seq = self.head + 1
        if not event.ts:
            event.ts = time.time()
        payload = encode(event)
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        written = os.pwrite(self._fd, record, self._end)
        if written != len(record):  # a short write (disk full): undo it so the log stays well-formed
            os.ftruncate(self._fd, self._end)
            raise OSError(f"short write to {self.path} ({written} of {len(record)} bytes)")
        self._offsets.append(self._end)
        self._end += len(record)
        if event.kind in _DURABLE_KINDS:
            self.sync()
        elif self._dirty_since is None:
            self._dirty_since = time.monotonic()
        return payload

    def sync(self) -> None:
        """fsync the log now; records the time it took in ``last_sync_s`` (seconds).  OSError if the fsync fails."""
        started = time.perf_counter()
        os.fsync(self._fd)
        self.last_sync_s = time.perf_counter() - started  # for tritterd --metrics
        self._dirty_since = None

    @property
    def size_bytes(self) -> int:
        """Bytes of the log file up to its last whole record."""
        return self._end

    def sync_if_due(self) -> None:
        """fsync when an unsynced event has waited at least ``group_sync_s`` seconds; else nothing."""
        if self._dirty_since is not None and time.monotonic() - self._dirty_since >= self.group_sync_s:
            self.sync()

    def close(self) -> None:
        """fsync and close the file (idempotent)."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
