"""``.safetensors.tzst`` version 2: frames written as they are made, the index at the end.

Layout::

    b"TRTZCKPT"          8 bytes, magic (as version 1)
    u64 LE 0             version 1 had its header length here; 0 = "the index is at the end"
    payload              frames, back to back, in file order
    JSON index           same fields as version 1's header (format, version, original, base,
                         chain, meta, payload_bytes, segments), version 2
    u64 LE               length of the JSON index
    b"TRTZIDX2"          8 bytes, end magic

Writing the index last lets compression stream tensor by tensor (a version 1 header, in front,
needed every stream's size before the first byte of payload).  Segments tile the original file
in order: the safetensors header, each tensor (name, dtype, shape, ``xxh3`` of its bytes,
``streams``: its frames, see ``formats/tzst_frames.py``), and rare gap bytes.

Integrity: each segment's original bytes carry an xxh3-64 (Collet, xxHash; ~9 GB/s here against
~0.45 GB/s for sha256), checked on every decode, so every byte of the output is checked at a
fraction of a sha256's cost.  The whole original file's sha256 is still recorded (the compressor
sink and delta bases identify files by it) but is not recomputed on decode.

Sources (``Source``): the bytes being compressed, or the base of a delta, read by
``(tensor, lo, hi)``: ``BytesSource`` (bytes in memory), ``RawFileSource`` (a ``.safetensors``
file, read with ``os.pread``), ``TzstReader`` (a version 2 file, decoded frame by frame, itself
reading its own base lazily).  Memory stays bounded by a few frames per thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import xxhash

from tritter.formats import tzst_frames as frames
from tritter.formats.safetensors_index import BaseMismatchError, CodecError, TensorSpan, header_length, parse_header
from tritter.protocol.oserrors import os_error_reason

MAGIC = b"TRTZCKPT"
FORMAT = "tritter-ckpt-zst"
VERSION = 2
TAIL_MAGIC = b"TRTZIDX2"
MAX_INDEX = 1 << 30
_KIND = re.compile(r"\d+")


def _xxh(data: Any) -> str:
    return xxhash.xxh3_64_hexdigest(data)


# --- sources ----------------------------------------------------------------------------------


class Source(Protocol):
    """Original safetensors content, read by range (see the module docstring)."""

    size: int
    spans: dict[str, TensorSpan]

    def header_bytes(self) -> bytes:
        """The safetensors header (8-byte length + JSON)."""
        ...

    def read(self, start: int, end: int) -> np.ndarray:
        """Original bytes ``[start, end)`` (absolute file offsets) as a uint8 array (may be a view)."""
        ...


class BytesSource:
    """A safetensors file held in memory (``bytes``, ``bytearray`` or ``memoryview``)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.size = len(self.view)
        self.data_start, spans, _ = parse_header(self.view, self.size)
        self.ordered = spans
        self.spans = {s.name: s for s in spans}

    def header_bytes(self) -> bytes:
        """The safetensors header: 8-byte little-endian length + JSON (``data_start`` bytes)."""
        return bytes(self.view[: self.data_start])

    def read(self, start: int, end: int) -> np.ndarray:
        """Original bytes ``[start, end)`` (absolute file offsets) as a uint8 array; a view of the memory, no copy."""
        return np.frombuffer(self.view[start:end], np.uint8)


class RawFileSource:
    """A ``.safetensors`` file, read range by range (never whole).  Raises CodecError naming the
    file when it cannot be opened or is not a (whole) safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = -1
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            self.size = os.fstat(self.fd).st_size
            head = os.pread(self.fd, header_length(os.pread(self.fd, 8, 0), self.size), 0)
            self.data_start, spans, _ = parse_header(head, self.size)
        except OSError as exc:
            self._close_fd()
            raise CodecError(f"{path}: {os_error_reason(exc)}") from None
        except CodecError as exc:
            self._close_fd()
            raise CodecError(f"{path}: {exc}") from None
        self._head = head
        self.ordered = spans
        self.spans = {s.name: s for s in spans}

    def header_bytes(self) -> bytes:
        """The safetensors header: 8-byte little-endian length + JSON, as read at open."""
        return self._head

    def read(self, start: int, end: int) -> np.ndarray:
        """Original bytes ``[start, end)`` (absolute file offsets) as a new uint8 array of ``end - start`` bytes.

        Raises CodecError when the file ends before ``end`` (it shrank while being read); OSError from pread.
        """
        out = np.empty(end - start, np.uint8)
        got = 0
        while got < len(out):  # pread may return short reads on large ranges
            n = os.preadv(self.fd, [memoryview(out)[got:]], start + got)
            if n <= 0:
                raise CodecError(f"{self.path}: file shrank while being read")
            got += n
        return out

    def close(self) -> None:
        """Close the file descriptor (once; a second call raises OSError)."""
        os.close(self.fd)

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- reading a version 2 file ------------------------------------------------------------------


def is_v2_prefix(first16: bytes) -> bool:
    """True when a ``.tzst`` file's first 16 bytes say version 2+ (index at the end)."""
    return len(first16) >= 16 and first16[:8] == MAGIC and first16[8:16] == b"\0" * 8


def read_index(f: BinaryIO | Any, size: int, what: str) -> dict[str, Any]:
    """The JSON index of a version 2 file open as ``f`` (``size`` bytes); CodecError if unusable."""
    if size < 32:
        raise CodecError(f"{what}: truncated .tzst file ({size} bytes)")
    f.seek(size - 16)
    tail = f.read(16)
    if tail[8:] != TAIL_MAGIC:
        raise CodecError(f"{what}: truncated .tzst file (no index at the end)")
    (n,) = struct.unpack_from("<Q", tail, 0)
    if n > min(size - 32, MAX_INDEX):
        raise CodecError(f"{what}: corrupt .tzst file (index length past the start)")
    f.seek(size - 16 - n)
    try:
        index = json.loads(f.read(n))
        if index.get("format") != FORMAT:
            raise CodecError(f"{what}: not a tritter .tzst file (format {index.get('format')!r})")
        if int(index["version"]) > VERSION:
            raise CodecError(f"{what}: .tzst format version {index['version']} is newer than this tritter ({VERSION})")
        expected = 16 + int(index["payload_bytes"]) + n + 16
    except CodecError:
        raise
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise CodecError(f"{what}: corrupt .tzst index") from None
    if expected != size:
        raise CodecError(f"{what}: {'truncated' if size < expected else 'corrupt'} .tzst file ({size} bytes, index says {expected})")
    return index


class _Blob:
    """Positional reads from a file descriptor or from bytes in memory."""

    def __init__(self, path: Path | None = None, data: bytes | bytearray | memoryview | None = None) -> None:
        self.fd = -1
        if data is not None:
            self.view: memoryview | None = memoryview(data).cast("B")
            self.size = len(self.view)
        else:
            self.view = None
            try:
                self.fd = os.open(Path(path), os.O_RDONLY)  # type: ignore[arg-type]
            except OSError as exc:
                raise CodecError(f"{path}: {os_error_reason(exc)}") from None
            self.size = os.fstat(self.fd).st_size
        self.pos = 0

    # the small file API read_index needs
    def seek(self, pos: int) -> None:
        """Set the position that ``read`` reads from (absolute byte offset)."""
        self.pos = pos

    def read(self, n: int) -> bytes:
        """Read ``n`` bytes at the current position and advance it by ``n``; returns bytes (short only in memory,
        past the end)."""
        out = self.pread(self.pos, n)
        self.pos += n
        return bytes(out)

    def pread(self, offset: int, n: int) -> memoryview:
        """``n`` bytes at absolute ``offset`` (a view for in-memory data, a new buffer for a file).

        Raises CodecError when the file ends before ``offset + n``; in memory a range past the end comes back short.
        """
        if self.view is not None:
            return self.view[offset : offset + n]
        buf = np.empty(n, np.uint8)  # not zero-filled: every byte is read into below
        got = 0
        while got < n:
            k = os.preadv(self.fd, [memoryview(buf)[got:]], offset + got)
            if k <= 0:
                raise CodecError("file shrank while being read")
            got += k
        return memoryview(buf)

    def close(self) -> None:
        """Close the file descriptor, if any (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TzstReader:
    """A version 2 ``.tzst`` file (on disk or in memory), decoded range by range.

    ``base``: a Source for a delta file's base, or a callable returning one (opened on first
    need), or None for a keyframe.  Raises CodecError/BaseMismatchError (one line, prefixed with
    ``what``) for anything unusable.
    """

    def __init__(self, path: Path | None = None, *, data: bytes | bytearray | memoryview | None = None,
                 base: Source | Callable[[], Source] | None = None, what: str | None = None) -> None:
        self.what = what or str(path)
        self.blob = _Blob(path, data)
        try:
            self.index = read_index(self.blob, self.blob.size, self.what)
            self._layout()
        except BaseException:
            self.blob.close()
            raise
        self._base = base
        self._base_lock = threading.Lock()
        self._head: bytes | None = None
        self.size = int(self.index["original"]["size"])
        # checked_reads: ``read`` checks the xxh3 of every segment it touches first (see ``read``)
        self.checked_reads = False
        self._verified: set[int] = set()
        self._verify_lock = threading.Lock()

    def _layout(self) -> None:
        """Check that segments tile the file and frames the payload; index frame offsets."""
        what = self.what
        try:
            size = int(self.index["original"]["size"])
            pos, offset = 0, 16
            self.segments: list[dict[str, Any]] = self.index["segments"]
            self.spans: dict[str, TensorSpan] = {}
            self.by_name: dict[str, dict[str, Any]] = {}
            self.offsets: list[list[int]] = []
            for seg in self.segments:
                start, end = int(seg["start"]), int(seg["end"])
                if start != pos or end < start or end > size:
                    raise CodecError(f"{what}: corrupt .tzst index (segments do not tile the file)")
                pos = end
                offs = []
                total = 0
                for d in seg["streams"]:
                    n = int(d["n"])
                    if n < 0:
                        raise CodecError(f"{what}: corrupt .tzst index (negative frame length)")
                    offs.append(offset)
                    offset += n
                    total += int(d["len"])
                if total != end - start:
                    raise CodecError(f"{what}: corrupt .tzst index (frames do not cover segment {seg.get('name')!r})")
                self.offsets.append(offs)
                if "dtype" in seg:
                    self.spans[seg["name"]] = TensorSpan(seg["name"], seg["dtype"], tuple(seg["shape"]), start, end)
                    self.by_name[seg["name"]] = seg
            if pos != size or offset != 16 + int(self.index["payload_bytes"]):
                raise CodecError(f"{what}: corrupt .tzst index (segments do not cover the file)")
        except CodecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CodecError(f"{what}: corrupt .tzst index") from None
        self.seg_pos = {id(s): i for i, s in enumerate(self.segments)}

    @property
    def base(self) -> Source | None:
        """The Source of a delta file's base (opened on first use when given as a callable, thread-safe), or None
        for a keyframe."""
        if callable(self._base) and not hasattr(self._base, "read"):
            with self._base_lock:
                if callable(self._base) and not hasattr(self._base, "read"):
                    self._base = self._base()
        return self._base  # type: ignore[return-value]

    def close(self) -> None:
        """Close the file and, when opened and closable, the delta base."""
        self.blob.close()
        b = self._base
        if b is not None and hasattr(b, "close"):
            b.close()

    # -- decoding -------------------------------------------------------------------------------
    def _payload(self, seg_i: int, k: int) -> memoryview:
        d = self.segments[seg_i]["streams"][k]
        return self.blob.pread(self.offsets[seg_i][k], int(d["n"]))

    def _base_range(self, seg: dict[str, Any], lo: int, hi: int) -> np.ndarray:
        base = self.base
        b = base.spans.get(seg["name"]) if base is not None else None
        if b is None or b.end - b.start != int(seg["end"]) - int(seg["start"]) or b.dtype != seg.get("dtype"):
            raise BaseMismatchError(f"{self.what}: delta base has no matching tensor {seg['name']!r}")
        return base.read(b.start + lo, b.start + hi)  # type: ignore[union-attr]

    def decode_frame(self, seg_i: int, k: int, out: np.ndarray, lo: int) -> None:
        """Decode frame ``k`` of segment ``seg_i`` (covering segment bytes from ``lo``) into ``out``."""
        seg = self.segments[seg_i]
        d = seg["streams"][k]
        base = self._base_range(seg, lo, lo + int(d["len"])) if d.get("x") else None
        base_header = None
        if d.get("dict") == "base-header":
            if self.base is None:
                raise CodecError(f"{self.what}: corrupt .tzst file (header dictionary needs a base)")
            base_header = self.base.header_bytes()
        try:
            frames.decode_frame(d, self._payload(seg_i, k), out, seg.get("dtype"), base, base_header)
        except frames.FrameError as exc:
            raise CodecError(f"{self.what}: segment {seg.get('name')!r}: {exc}") from None

    def frame_spans(self, seg_i: int) -> Iterator[tuple[int, int, int]]:
        """(frame index k, its first byte within the segment, its decoded length) per frame of ``seg_i``."""
        lo = 0
        for k, d in enumerate(self.segments[seg_i]["streams"]):
            n = int(d["len"])
            yield k, lo, n
            lo += n

    def frame_jobs(self, seg_i: int, out: np.ndarray) -> list[tuple[int, Callable[[], None]]]:
        """(decoded bytes, callable) per frame of segment ``seg_i``, each decoding into its slice of ``out``."""
        return [(n, lambda k=k, lo=lo, n=n: self.decode_frame(seg_i, k, out[lo : lo + n], lo))
                for k, lo, n in self.frame_spans(seg_i)]

    def _mismatch(self, seg_i: int) -> None:
        name = self.segments[seg_i].get("name")
        raise CodecError(f"{self.what}: segment {name!r} fails its xxh3 check (corrupt file, or a wrong delta base)")

    def check(self, seg_i: int, out: np.ndarray) -> None:
        """Check decoded segment ``seg_i`` (``out``: its uint8 bytes) against the index's xxh3.

        Raises CodecError when the digest differs (a corrupt file or the wrong delta base).
        """
        if _xxh(out) != self.segments[seg_i].get("xxh3"):
            self._mismatch(seg_i)

    def decode_segment(self, seg_i: int, out: np.ndarray | None = None, check: bool = True) -> np.ndarray:
        """Decode segment ``seg_i`` (original bytes ``[start, end)``) into ``out`` (uint8, ``end - start``
        long; allocated when None) and return it; with ``check`` verify its xxh3.

        Raises CodecError for a corrupt frame or a failed check, BaseMismatchError when a delta's base
        lacks the matching tensor.
        """
        seg = self.segments[seg_i]
        if out is None:
            out = np.empty(int(seg["end"]) - int(seg["start"]), np.uint8)
        for _, job in self.frame_jobs(seg_i, out):
            job()
        if check:
            self.check(seg_i, out)
        return out

    # -- Source API (this file as the base of the next delta) -------------------------------------
    def header_bytes(self) -> bytes:
        """The original safetensors header (segment 0, decoded and cached on first call); raises as ``decode_segment``."""
        if self._head is None:
            self._head = self.decode_segment(0).tobytes()
        return self._head

    def read(self, start: int, end: int) -> np.ndarray:
        """Original bytes ``[start, end)``: decodes the frames they touch (whole frames).

        With ``checked_reads`` (set when this file is the base of a delta being written) every
        segment it touches is first decoded frame by frame and checked against its xxh3, once
        (``verify_segment``): a delta made against damaged base bytes would decode right only
        against the same damage, and its index would still name the intact base's sha256.
        Decoding a delta needs no such check: its own segments' xxh3 catch a wrong base.
        Raises CodecError.
        """
        out = np.empty(end - start, np.uint8)
        for seg_i, seg in enumerate(self.segments):
            s0, s1 = int(seg["start"]), int(seg["end"])
            if s1 <= start or s0 >= end:
                continue
            if self.checked_reads:
                self.verify_segment(seg_i)
            for k, lo, n in self.frame_spans(seg_i):
                f0, f1 = s0 + lo, s0 + lo + n
                if f1 <= start or f0 >= end:
                    continue
                if f0 >= start and f1 <= end:
                    self.decode_frame(seg_i, k, out[f0 - start : f1 - start], lo)
                else:
                    tmp = np.empty(n, np.uint8)
                    self.decode_frame(seg_i, k, tmp, lo)
                    a, b = max(f0, start), min(f1, end)
                    out[a - start : b - start] = tmp[a - f0 : b - f0]
        return out

    def verify_segment(self, seg_i: int) -> None:
        """Decode segment ``seg_i`` frame by frame (one frame in memory at a time) and check its
        xxh3, once per reader (later calls return at once).  Raises CodecError on a mismatch."""
        with self._verify_lock:
            if seg_i in self._verified:
                return
            h = xxhash.xxh3_64()
            for k, lo, n in self.frame_spans(seg_i):
                frame = np.empty(n, np.uint8)
                self.decode_frame(seg_i, k, frame, lo)
                h.update(frame)
            if h.hexdigest() != self.segments[seg_i].get("xxh3"):
                self._mismatch(seg_i)
            self._verified.add(seg_i)


# --- parallel helpers --------------------------------------------------------------------------


BATCH_BYTES = 4 << 20  # frames travel to a worker in batches of up to this many bytes (measured: 1 MiB batches gave 2 threads 5-25% less)


def batches(items: Iterable[tuple[int, Any]], batch_bytes: int = BATCH_BYTES) -> Iterator[list[Any]]:
    """Group ``(cost, item)`` pairs, in order, into lists whose costs add up to at most
    ``batch_bytes`` (an item costing more than that is a batch of its own)."""
    batch: list[Any] = []
    size = 0
    for cost, item in items:
        if batch and size + cost > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield batch


def ordered_map(items: Iterator[tuple[int, Callable[[], Any]]], threads: int, batch_bytes: int = BATCH_BYTES) -> Iterator[Any]:
    """Run ``(cost, callable)`` items on ``threads`` threads, yielding results in order.

    ``cost`` is the item's size in bytes.  Consecutive items go to a worker in ``batches`` of
    up to ``batch_bytes``: handing a job to a thread and back costs ~50-100 µs here, more than
    coding a small tensor, and a checkpoint has hundreds of them (norms, biases), so one job
    per frame made two threads slower than one.  At most ``2 * threads`` batches are in
    flight: memory stays bounded by a few frames.  An item's exception is raised when its
    batch's turn comes (callers abandon the whole file on any error).
    """
    if threads <= 1:
        for _, f in items:
            yield f()
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[list[Any]]] = deque()
        try:
            for batch in batches(items, batch_bytes):
                pending.append(pool.submit(lambda b=batch: [f() for f in b]))
                if len(pending) >= 2 * threads:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for p in pending:
                p.cancel()


# --- compress ---------------------------------------------------------------------------------


def _sample_range(nbytes: int, width: int) -> tuple[int, int]:
    if nbytes <= 2 * frames.SAMPLE_BYTES:
        return 0, nbytes
    lo = (nbytes - frames.SAMPLE_BYTES) // 2 // width * width
    return lo, lo + frames.SAMPLE_BYTES


def compress(
    src: BytesSource | RawFileSource,
    write: Callable[[bytes | memoryview], object],
    *,
    name: str,
    base: Source | None = None,
    base_name: str | None = None,
    base_sha256: str | None = None,
    base_chain: int = 0,
    meta: dict[str, Any] | None = None,
    threads: int = 1,
    sha256: str | None = None,
    max_ratio: bool = False,
) -> dict[str, Any]:
    """Compress ``src`` into a version 2 file, passing its bytes in order to ``write``.

    ``max_ratio``: allow the slower exponent coding ``b2e`` on AdamW moments too (``exp_coding_allowed``).

    ``base`` (with ``base_name``, ``base_sha256`` of its original file, ``base_chain`` its chain
    depth) makes a delta file; ``sha256``: the original file's sha256 if the caller has it
    (else computed here, at ~0.45 GB/s).  Returns the index written.
    """
    total = [0]

    def put(b: bytes | memoryview) -> None:
        if len(b):
            write(b)
            total[0] += len(b)

    hasher = hashlib.sha256() if sha256 is None else None
    put(MAGIC + b"\0" * 8)
    head = src.header_bytes()
    base_head = base.header_bytes() if base is not None else None

    # (segment entry, [(frame bytes, job)]) in file order; a job returns (desc, parts, original bytes).
    def segments() -> Iterator[tuple[dict[str, Any], list[tuple[int, Callable[[], tuple[dict[str, Any], list[bytes], np.ndarray]]]]]]:
        raw_head = np.frombuffer(head, np.uint8)
        yield {"name": "__header__", "start": 0, "end": len(head)}, [(len(head), lambda: (*frames.encode_header(head, base_head), raw_head))]
        pos = len(head)
        for span in src.ordered:
            if span.start > pos:
                yield _gap_segment(src, pos, span.start)
            yield _tensor_segment(src, span, base, decisions, max_ratio)
            pos = span.end
        if pos < src.size:
            yield _gap_segment(src, pos, src.size)

    entries: list[dict[str, Any]] = []
    decisions: dict[tuple[str, str, bool], tuple[str, bool]] = {}

    def jobs() -> Iterator[tuple[int, Callable[[], tuple[dict[str, Any], tuple[dict[str, Any], list[bytes], np.ndarray]]]]]:
        for entry, seg_jobs in segments():
            entry["streams"] = []
            entry["_x"] = xxhash.xxh3_64()
            entries.append(entry)
            for cost, job in seg_jobs:
                yield cost, lambda job=job, entry=entry: (entry, job())

    for entry, (desc, parts, raw) in ordered_map(jobs(), threads):
        entry["streams"].append(desc)
        for p in parts:
            put(p)
        entry["_x"].update(raw)  # the original bytes, hashed in file order
        if hasher is not None:
            hasher.update(raw)
    for entry in entries:
        entry["xxh3"] = entry.pop("_x").hexdigest()
    payload_bytes = total[0] - 16
    index: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "original": {"name": name, "size": src.size, "sha256": sha256 if sha256 is not None else hasher.hexdigest()},  # type: ignore[union-attr]
        "base": None,
        "chain": 0,
        "meta": meta or {},
        "integrity": "xxh3-64 per segment",
        "payload_bytes": payload_bytes,
        "segments": entries,
    }
    if base is not None:
        index["base"] = {"name": base_name or "base.safetensors", "size": base.size, "sha256": base_sha256}
        index["chain"] = base_chain + 1
    blob = json.dumps(index, separators=(",", ":")).encode()
    put(blob)
    put(struct.pack("<Q", len(blob)) + TAIL_MAGIC)
    return index


def _gap_segment(src: BytesSource | RawFileSource, start: int, end: int) -> tuple[dict[str, Any], list[Any]]:
    def job() -> tuple[dict[str, Any], list[bytes], np.ndarray]:
        raw = src.read(start, end)
        return (*frames.encode_frame(raw, "", "zstd"), raw)

    return {"name": "__gap__", "start": start, "end": end}, [(end - start, job)]


MOMENT_SUFFIXES = (".exp_avg", ".exp_avg_sq")  # AdamW moments, as tritter's checkpoints name them


def exp_coding_allowed(name: str, max_ratio: bool = False) -> bool:
    """Whether tensor ``name`` may use the exponent coding ``b2e`` (else ``b2`` / XOR ``b2`` only).

    The rule per tensor kind, measured side by side with ZipNN (docs/benchmarks.md, issue 17):
    on weights, ``b2`` falls 1-3% short of ZipNN's ratio (sign and exponent share the top byte)
    and ``b2e`` beats it, so weights may use ``b2e`` (the smaller on a sample wins); on AdamW
    moments ``b2`` already beats ZipNN by 2-10% and ``b2e`` would save only 1.4% (fp32) to 3%
    (bf16) more while decoding at about half the speed, so moments (2/3 of a checkpoint's bytes)
    stay on the fast path.  ``max_ratio`` (``tritter-ckpt compress --max-ratio``) allows it
    everywhere.
    """
    return max_ratio or not name.endswith(MOMENT_SUFFIXES)


def _tensor_segment(src: BytesSource | RawFileSource, span: TensorSpan, base: Source | None,
                    decisions: dict[tuple[str, str, bool], tuple[str, bool]], max_ratio: bool = False) -> tuple[dict[str, Any], list[Any]]:
    """The segment entry and frame jobs of one tensor.

    The method is chosen on a sample of the first tensor of each kind (dtype + name with the
    numbers taken out: every layer's ``q_proj.weight`` is one kind, every ``exp_avg_sq``
    another) and reused for the rest, so choosing costs a few samples per file, not per tensor.
    """
    entry: dict[str, Any] = {"name": span.name, "dtype": span.dtype, "shape": list(span.shape), "start": span.start, "end": span.end}
    nbytes = span.end - span.start
    width = frames.WIDTH.get(span.dtype)
    b = base.spans.get(span.name) if base is not None else None
    use_base = b is not None and b.dtype == span.dtype and b.shape == span.shape and width is not None
    method, delta = "zstd", False
    if width is not None and nbytes >= frames.SMALL_TENSOR and nbytes % width == 0:
        key = (span.dtype, _KIND.sub("#", span.name), use_base)
        if key not in decisions:
            lo, hi = _sample_range(nbytes, width)
            sample = src.read(span.start + lo, span.start + hi)
            bsample = base.read(b.start + lo, b.start + hi) if use_base else None  # type: ignore[union-attr]
            decisions[key] = frames.choose_method(sample, span.dtype, bsample, exp_coding_allowed(span.name, max_ratio))
        method, delta = decisions[key]

    def job(lo: int, hi: int) -> tuple[dict[str, Any], list[bytes], np.ndarray]:
        raw = src.read(span.start + lo, span.start + hi)
        braw = base.read(b.start + lo, b.start + hi) if delta else None  # type: ignore[union-attr]
        return (*frames.encode_frame(raw, span.dtype, method, braw), raw)

    return entry, [(hi - lo, lambda lo=lo, hi=hi: job(lo, hi)) for lo, hi in frames.frame_ranges(nbytes)]


# --- decompress -------------------------------------------------------------------------------


def _segment_jobs(reader: TzstReader, i: int, out: np.ndarray) -> Iterator[tuple[int, Callable[[], tuple[int, str, np.ndarray]]]]:
    """(bytes, job) per frame of segment ``i``, decoding into ``out`` (the segment's bytes); each
    job returns (i, state, out): ``checked`` (the segment is complete and checked), ``frame``
    (more to come) or ``last`` (complete, to be checked by the caller).

    A one-frame segment (most tensors) is checked against its xxh3 inside its job, on the
    worker; a longer one by the caller once its last frame is in (``_check_done``).
    """
    fjobs = reader.frame_jobs(i, out)
    if len(fjobs) == 1:
        n, fj = fjobs[0]
        yield n, lambda: (fj(), reader.check(i, out), i, "checked", out)[2:]
        return
    for k, (n, fj) in enumerate(fjobs):
        yield n, lambda fj=fj, state="last" if k == len(fjobs) - 1 else "frame": (fj(), i, state, out)[1:]


def _check_done(reader: TzstReader, results: Iterator[tuple[int, str, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """(segment index, its bytes) for each segment as it completes, in order, every one checked."""
    for i, state, out in results:
        if state == "last":
            reader.check(i, out)
        if state != "frame":
            yield i, out


def iter_segments(reader: TzstReader, threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(segment index, its original bytes, checked) in file order; frames decode ahead on ``threads``.

    At most ``2 * threads`` batches of frames are in flight (``ordered_map``), so memory stays
    bounded by a few frames plus the segments being filled.
    """

    def jobs() -> Iterator[tuple[int, Callable[[], tuple[int, str, np.ndarray]]]]:
        for i, seg in enumerate(reader.segments):
            out = np.empty(int(seg["end"]) - int(seg["start"]), np.uint8)
            yield from _segment_jobs(reader, i, out)

    yield from _check_done(reader, ordered_map(jobs(), threads))


def decode_into(reader: TzstReader, out: np.ndarray, threads: int = 1) -> None:
    """Decode the whole file into ``out`` (uint8, ``reader.size`` bytes), frames in parallel.

    Frames are decoded straight into their place (no per-segment buffer, no copy); each
    segment's xxh3 is checked as soon as its last frame is in.  Raises CodecError.
    """
    if out.nbytes != reader.size:
        raise ValueError("output buffer size does not match the original file")

    def jobs() -> Iterator[tuple[int, Callable[[], tuple[int, str, np.ndarray]]]]:
        for i, seg in enumerate(reader.segments):
            yield from _segment_jobs(reader, i, out[int(seg["start"]) : int(seg["end"])])

    for _ in _check_done(reader, ordered_map(jobs(), threads)):
        pass
