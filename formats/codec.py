"""Lossless compression of safetensors checkpoints: the ``.safetensors.tzst`` format.

A compressed file reproduces the original ``.safetensors`` file byte for byte.

Layout::

    b"TRTZCKPT"            8 bytes, magic
    u64 little-endian      length H of the JSON header
    H bytes                JSON header (below)
    payload                the streams, back to back, in header order

The header records the format version, the original file's name, size and sha256, the
caller's ``meta`` (the sink stores run, step, stage and reason there), for a delta file the
base's name and sha256 and the ``chain`` depth (0 = keyframe), and one *segment* per byte
range of the original file, in file order, covering it exactly:

* the safetensors header (8-byte length + JSON) — zstd-15, or for a delta zstd-15 with the
  base's header as a raw-content dictionary;
* one segment per tensor with its name, dtype, shape, sha256 of its bytes, a transform and
  its streams;
* (rarely) gap bytes between tensors, stored as plain zstd.

Float tensors (F32, BF16, F16, F64) are *byte-grouped*: the little-endian words are split
into one stream per byte position.  F32 and BF16 words are first rotated left by one bit so
that the top byte is exactly the 8-bit exponent and the sign joins the low mantissa byte —
the exponent stream then has a few dozen distinct values and compresses several-fold, while
the mantissa streams are near-random and are only Huffman coded (zstd level 1), or stored raw
when that gains under 1%.  A stream of one repeated byte is stored as that byte alone.

Delta mode: a tensor present in the base with the same name, dtype and shape is stored as
the XOR of its words with the base's words (then rotated and byte-grouped).  Consecutive
checkpoints share sign, exponent and the top mantissa bits of most values, so most XOR bytes
are zero.  Other tensors (a new stage's shapes, RNG state) are stored in full.

Integrity: every tensor's sha256 and the whole file's sha256 are in the header; decoding
checks the whole-file digest (and ``verify`` each tensor's) so a corrupt or truncated file,
or a wrong delta base, is reported, never silently decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from tritter.formats.checkpoints import SUFFIX, is_compressed, raw_name
from tritter.formats.files import atomic_write, file_sha256

MAGIC = TZST_MAGIC  # b"TRTZCKPT"
FORMAT = "tritter-ckpt-zst"
VERSION = 1
MAX_CHAIN = 1000  # a delta chain longer than this is refused as corrupt (a loop)

# Tuning (see docs/compression.md for how these were chosen).
EXP_LEVEL = 1  # exponent streams (see docs/compression.md: higher levels cost 10-100x the time)
DELTA_LEVEL = 3  # XOR-with-base streams: long runs of zeros
DELTA_SAMPLE = 1 << 16  # elements sampled to choose, per byte stream, value or XOR-with-base
MANTISSA_LEVEL = 1  # near-random bytes: zstd's Huffman literals do all the work
HEADER_LEVEL = 15  # within 0.2% of level 19 on real headers, 3x faster
PLAIN_LEVEL = 3  # non-float tensors
RAW_IF_SAVES_LESS = 0.01  # store a stream raw unless compression saves at least 1%
RAW_PROBE = 1 << 16  # bytes sampled to skip compressing a stream that will be stored raw anyway
SMALL_TENSOR = 4096  # bytes; below this, a tensor is one plain zstd stream

_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_ROTATE = {"F32", "BF16"}  # exponent fits a byte after moving the sign to bit 0
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


class CodecError(Exception):
    """The input is not usable: corrupt, truncated, not a checkpoint, or a wrong delta base."""


class BaseMismatchError(CodecError):
    """A delta file's base is missing or is not the file it was made from."""


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# --- safetensors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


def parse_safetensors(data: bytes | memoryview) -> tuple[int, list[TensorSpan], dict[str, str]]:
    """(header end offset, tensors sorted by offset, metadata); CodecError if malformed."""
    if len(data) < 8:
        raise CodecError("not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8 or n > 100_000_000:
        raise CodecError("not a safetensors file (header length past the end of the file)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CodecError("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CodecError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    spans = []
    try:
        for name, info in header.items():
            begin, end = (int(x) for x in info["data_offsets"])
            spans.append(TensorSpan(name, str(info["dtype"]), tuple(int(x) for x in info["shape"]), data_start + begin, data_start + end))
    except (KeyError, TypeError, ValueError):
        raise CodecError("not a safetensors file (malformed tensor entry)") from None
    spans.sort(key=lambda s: (s.start, s.end))
    pos = data_start
    for s in spans:
        if s.start < pos or s.end < s.start or s.end > len(data):
            raise CodecError(f"not a safetensors file (tensor {s.name!r} overlaps or runs past the end)")
        pos = s.end
    return data_start, spans, metadata


def safetensors_metadata(data: bytes | memoryview) -> dict[str, str]:
    """The ``__metadata__`` dict of safetensors bytes (e.g. from ``read_safetensors_bytes``)."""
    return parse_safetensors(data)[2]


# --- byte transforms -----------------------------------------------------------------------


def _rotl(words: np.ndarray, bits: int) -> np.ndarray:
    return (words << words.dtype.type(1)) | (words >> words.dtype.type(bits - 1))


def _rotr(words: np.ndarray, bits: int) -> np.ndarray:
    return (words >> words.dtype.type(1)) | (words << words.dtype.type(bits - 1))


def _split(words: np.ndarray, width: int) -> list[np.ndarray]:
    grouped = words.view(np.uint8).reshape(-1, width).T.copy()  # (width, n), each row a stream
    return [grouped[j] for j in range(width)]


def _join(streams: list[np.ndarray], width: int) -> np.ndarray:
    n = len(streams[0])
    out = np.empty((n, width), dtype=np.uint8)
    for j, s in enumerate(streams):
        out[:, j] = s
    return out.reshape(-1)


# --- streams -------------------------------------------------------------------------------


class _Compressors:
    """zstd compressors by level (a ZstdCompressor is not thread-safe: one per call)."""

    @staticmethod
    def compress(data: bytes | memoryview | np.ndarray, level: int, dict_data: zstandard.ZstdCompressionDict | None = None) -> bytes:
        c = zstandard.ZstdCompressor(level=level, dict_data=dict_data, write_checksum=False, write_content_size=True)
        return c.compress(data)


def _encode_stream(buf: np.ndarray, level: int, raw_ok: bool = True) -> tuple[dict[str, Any], bytes]:
    """One byte stream -> (descriptor, payload bytes)."""
    n = len(buf)
    if n and (buf == buf[0]).all():
        return {"m": "const", "v": int(buf[0]), "n": 0, "len": n}, b""
    if raw_ok and n > 4 * RAW_PROBE:  # a near-random stream: a sample says so, for a fraction of the work
        mid = (n - RAW_PROBE) // 2
        if len(_Compressors.compress(memoryview(buf[mid : mid + RAW_PROBE]), level)) > RAW_PROBE * (1 - RAW_IF_SAVES_LESS / 2):
            return {"m": "raw", "n": n, "len": n}, buf.tobytes()
    packed = _Compressors.compress(memoryview(buf), level)
    if raw_ok and len(packed) > n * (1 - RAW_IF_SAVES_LESS):
        return {"m": "raw", "n": n, "len": n}, buf.tobytes()
    return {"m": "zstd", "n": len(packed), "len": n}, packed


def _decode_stream(desc: dict[str, Any], payload: memoryview, dict_data: zstandard.ZstdCompressionDict | None = None) -> np.ndarray:
    method, length = desc["m"], int(desc["len"])
    if method == "const":
        return np.full(length, desc["v"], dtype=np.uint8)
    if method == "raw":
        if len(payload) != length:
            raise CodecError("corrupt stream (raw length mismatch)")
        return np.frombuffer(payload, dtype=np.uint8)
    if method == "zstd":
        try:
            out = zstandard.ZstdDecompressor(dict_data=dict_data).decompress(payload, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt stream ({exc})") from None
        if len(out) != length:
            raise CodecError("corrupt stream (decoded length mismatch)")
        return np.frombuffer(out, dtype=np.uint8)
    raise CodecError(f"unknown stream method {method!r} (written by a newer tritter?)")


# --- compress ------------------------------------------------------------------------------


@dataclass
class _Job:
    """A segment being encoded: its header entry and the payload of each stream."""

    entry: dict[str, Any]
    payloads: list[bytes]


def _encode_tensor(data: memoryview, span: TensorSpan, base: memoryview | None) -> _Job:
    raw = data[span.start : span.end]
    entry: dict[str, Any] = {
        "name": span.name,
        "dtype": span.dtype,
        "shape": list(span.shape),
        "start": span.start,
        "end": span.end,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    width = _WIDTH.get(span.dtype)
    nbytes = span.end - span.start
    if width is None or nbytes < SMALL_TENSOR or nbytes % width:
        desc, payload = _encode_stream(np.frombuffer(raw, dtype=np.uint8), PLAIN_LEVEL)
        entry.update(t="plain", delta=None, streams=[desc])
        return _Job(entry, [payload])
    utype = _UINT[width]
    rotate = span.dtype in _ROTATE
    words = np.frombuffer(raw, dtype=utype)
    if rotate:
        words = _rotl(words, width * 8)
    mask = 0
    if base is not None:
        # XOR is bytewise, so each byte stream chooses on its own between the value and its
        # XOR with the base: decided on a sample, with the fast level.
        bwords = np.frombuffer(base, dtype=utype)
        if rotate:
            bwords = _rotl(bwords, width * 8)
        k = min(len(words), DELTA_SAMPLE)
        lo = (len(words) - k) // 2
        plain_s = _split(np.ascontiguousarray(words[lo : lo + k]), width)
        xor_s = _split(words[lo : lo + k] ^ bwords[lo : lo + k], width)
        for j in range(width):
            a = len(_Compressors.compress(memoryview(plain_s[j]), MANTISSA_LEVEL))
            b = len(_Compressors.compress(memoryview(xor_s[j]), MANTISSA_LEVEL))
            if b < a:
                mask |= 0xFF << (8 * j)
        if mask:
            words = words ^ (bwords & utype(mask))
    streams = _split(np.ascontiguousarray(words), width)
    descs, payloads = [], []
    for j, s in enumerate(streams):
        xored = bool(mask >> (8 * j) & 0xFF)
        level = EXP_LEVEL if j == width - 1 else (DELTA_LEVEL if xored else MANTISSA_LEVEL)
        d, p = _encode_stream(s, level)
        if xored:
            d["x"] = 1
        descs.append(d)
        payloads.append(p)
    delta = "xor" if mask else None
    entry.update(t=f"bg{width}" + ("r" if rotate else ""), delta=delta, streams=descs)
    return _Job(entry, payloads)


def _encode_plain(data: memoryview, start: int, end: int, level: int, name: str, dict_data: zstandard.ZstdCompressionDict | None = None) -> _Job:
    raw = data[start:end]
    packed = _Compressors.compress(raw, level, dict_data)
    desc = {"m": "zstd", "n": len(packed), "len": end - start}
    if dict_data is not None:
        desc["dict"] = "base-header"
    return _Job({"name": name, "start": start, "end": end, "sha256": hashlib.sha256(raw).hexdigest(), "t": "plain", "delta": None, "streams": [desc]}, [packed])


def _base_tensors(base: memoryview) -> tuple[int, dict[str, TensorSpan]]:
    data_start, spans, _ = parse_safetensors(base)
    return data_start, {s.name: s for s in spans}


def compress_bytes(
    data: bytes | memoryview,
    *,
    name: str = "checkpoint.safetensors",
    base: bytes | memoryview | None = None,
    base_name: str | None = None,
    base_chain: int = 0,
    meta: dict[str, Any] | None = None,
    threads: int | None = None,
) -> list[bytes]:
    """Compress safetensors bytes; returns the output file as a list of chunks (header first).

    With ``base`` (the previous checkpoint's original bytes) the result is a delta file that
    needs that base, found by ``base_name`` next to it, to decode; ``base_chain`` is the base's
    own chain depth (0 for a raw file or a keyframe).
    """
    data = memoryview(data).cast("B")
    data_start, spans, _ = parse_safetensors(data)
    base_view = memoryview(base).cast("B") if base is not None else None
    base_index: dict[str, TensorSpan] = {}
    base_dict = None
    if base_view is not None:
        base_start, base_index = _base_tensors(base_view)
        base_dict = zstandard.ZstdCompressionDict(bytes(base_view[:base_start]), dict_type=zstandard.DICT_TYPE_RAWCONTENT)

    work: list[Any] = [lambda: _encode_plain(data, 0, data_start, HEADER_LEVEL, "__header__", base_dict)]
    pos = data_start
    for span in spans:
        if span.start > pos:
            work.append(lambda a=pos, b=span.start: _encode_plain(data, a, b, PLAIN_LEVEL, "__gap__"))
        b = base_index.get(span.name)
        bview = None
        if b is not None and base_view is not None and b.dtype == span.dtype and b.shape == span.shape and span.dtype in _WIDTH:
            bview = base_view[b.start : b.end]
        work.append(lambda s=span, bv=bview: _encode_tensor(data, s, bv))
        pos = span.end
    if pos < len(data):
        work.append(lambda a=pos, b=len(data): _encode_plain(data, a, b, PLAIN_LEVEL, "__gap__"))

    n_threads = threads or default_threads()
    if n_threads > 1:
        with ThreadPoolExecutor(n_threads) as pool:
            jobs = list(pool.map(lambda f: f(), work))
    else:
        jobs = [f() for f in work]

    payload_bytes = sum(len(p) for j in jobs for p in j.payloads)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "original": {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "base": None,
        "chain": 0,
        "meta": meta or {},
        "payload_bytes": payload_bytes,
        "segments": [j.entry for j in jobs],
    }
    if base_view is not None:
        header["base"] = {"name": base_name or "base.safetensors", "size": len(base_view), "sha256": hashlib.sha256(base_view).hexdigest()}
        header["chain"] = base_chain + 1
    head = json.dumps(header, separators=(",", ":")).encode()
    chunks = [MAGIC + struct.pack("<Q", len(head)) + head]
    chunks.extend(p for j in jobs for p in j.payloads if p)
    return chunks


# --- decompress ----------------------------------------------------------------------------


def _parse_container(blob: bytes | memoryview, what: str = "input") -> tuple[dict[str, Any], memoryview]:
    blob = memoryview(blob).cast("B")
    if len(blob) < 16 or bytes(blob[:8]) != MAGIC:
        if len(blob) < 16 and bytes(blob[: min(8, len(blob))]) == MAGIC[: min(8, len(blob))]:
            raise CodecError(f"{what}: truncated .tzst file ({len(blob)} bytes)")
        raise CodecError(f"{what}: not a tritter .tzst file (bad magic)")
    (hlen,) = struct.unpack_from("<Q", blob, 8)
    if 16 + hlen > len(blob):
        raise CodecError(f"{what}: truncated .tzst file (header runs past the end)")
    try:
        header = json.loads(bytes(blob[16 : 16 + hlen]))
        if header.get("format") != FORMAT:
            raise CodecError(f"{what}: not a tritter .tzst file (format {header.get('format')!r})")
        if int(header["version"]) > VERSION:
            raise CodecError(f"{what}: .tzst format version {header['version']} is newer than this tritter ({VERSION})")
        payload = blob[16 + hlen :]
        if len(payload) != int(header["payload_bytes"]):
            kind = "truncated" if len(payload) < int(header["payload_bytes"]) else "corrupt"
            raise CodecError(f"{what}: {kind} .tzst file (payload is {len(payload)} bytes, header says {header['payload_bytes']})")
    except CodecError:
        raise
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise CodecError(f"{what}: corrupt .tzst header") from None
    return header, payload


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .tzst file, without reading the payload (CodecError if unreadable)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            first = f.read(16)
            if len(first) < 16 or first[:8] != MAGIC:
                raise CodecError(f"{path}: not a tritter .tzst file" + (" (truncated)" if len(first) < 16 else " (bad magic)"))
            (hlen,) = struct.unpack_from("<Q", first, 8)
            size = os.fstat(f.fileno()).st_size
            if 16 + hlen > size:
                raise CodecError(f"{path}: truncated .tzst file (header runs past the end)")
            head = f.read(hlen)
    except OSError as exc:
        raise CodecError(f"{path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(head)
        if header.get("format") != FORMAT:
            raise ValueError
        expected = 16 + hlen + int(header["payload_bytes"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise CodecError(f"{path}: corrupt .tzst header") from None
    if size != expected:
        raise CodecError(f"{path}: {'truncated' if size < expected else 'corrupt'} .tzst file ({size} bytes, header says {expected})")
    return header


def _decode_segment(entry: dict[str, Any], payloads: list[memoryview], base: memoryview | None, base_spans: dict[str, TensorSpan], base_dict: Any) -> np.ndarray:
    t = entry["t"]
    size = int(entry["end"]) - int(entry["start"])
    width = int(t[2]) if t.startswith("bg") and t[2:3].isdigit() else 1
    if any(int(d["len"]) != size // width for d in entry["streams"]) or size % width or len(entry["streams"]) != width:
        raise CodecError("corrupt .tzst header (stream lengths do not match the segment)")
    streams = []
    for desc, p in zip(entry["streams"], payloads):
        d = base_dict if desc.get("dict") == "base-header" else None
        if desc.get("dict") == "base-header" and base_dict is None:
            raise CodecError("corrupt .tzst file (header dictionary needs a base)")
        streams.append(_decode_stream(desc, p, d))
    if t == "plain":
        return streams[0]
    m = re.fullmatch(r"bg(\d)(r?)", t)
    if not m or int(m.group(1)) not in _UINT:
        raise CodecError(f"unknown transform {t!r} (written by a newer tritter?)")
    width, rotate = int(m.group(1)), bool(m.group(2))
    if len(streams) != width or len({len(s) for s in streams}) != 1:
        raise CodecError("corrupt .tzst file (byte streams disagree)")
    utype = _UINT[width]
    words = _join(streams, width).view(utype)
    if entry.get("delta") == "xor":
        mask = sum(0xFF << (8 * j) for j, d in enumerate(entry["streams"]) if d.get("x"))
        b = base_spans.get(entry["name"]) if base is not None else None
        if b is None or b.end - b.start != len(words) * width:
            raise BaseMismatchError(f"delta base has no matching tensor {entry['name']!r}")
        bwords = np.frombuffer(base[b.start : b.end], dtype=utype)
        if rotate:
            bwords = _rotl(bwords, width * 8)
        words ^= bwords & utype(mask)
    elif entry.get("delta"):
        raise CodecError(f"unknown delta {entry['delta']!r} (written by a newer tritter?)")
    if rotate:
        words = _rotr(words, width * 8)
    return words.view(np.uint8)


def decompress_bytes(blob: bytes | memoryview, base: bytes | memoryview | None = None, *, what: str = "input", check_tensors: bool = False, threads: int | None = None) -> bytearray:
    """The original safetensors bytes of a .tzst file's contents; ``base`` for a delta file.

    Checks the whole-file sha256 (and with ``check_tensors`` every tensor's); CodecError on any
    mismatch, BaseMismatchError when ``base`` is missing or is the wrong file.
    """
    try:
        return _decompress(blob, base, what, check_tensors, threads)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, MemoryError) as exc:
        raise CodecError(f"{what}: corrupt .tzst file ({type(exc).__name__} decoding its header)") from None


def _decompress(blob: bytes | memoryview, base: bytes | memoryview | None, what: str, check_tensors: bool, threads: int | None) -> bytearray:
    header, payload = _parse_container(blob, what)
    base_view = None
    base_spans: dict[str, TensorSpan] = {}
    base_dict = None
    if header.get("base"):
        want = header["base"]
        if base is None:
            raise BaseMismatchError(f"{what}: is a delta of {want['name']} and needs it to decode")
        base_view = memoryview(base).cast("B")
        got = hashlib.sha256(base_view).hexdigest()
        if got != want["sha256"]:
            raise BaseMismatchError(f"{what}: delta base {want['name']} does not match (sha256 {got[:12]}…, expected {want['sha256'][:12]}…)")
        base_start, base_spans = _base_tensors(base_view)
        base_dict = zstandard.ZstdCompressionDict(bytes(base_view[:base_start]), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    original = header["original"]
    offset = 0
    tasks = []
    try:
        size = int(original["size"])
        pos = 0
        for entry in header["segments"]:
            start, end = int(entry["start"]), int(entry["end"])
            if start != pos or end < start or end > size:
                raise CodecError(f"{what}: corrupt .tzst header (segments do not tile the file)")
            pos = end
            plist = []
            for desc in entry["streams"]:
                n = int(desc["n"])
                if n < 0:
                    raise CodecError(f"{what}: corrupt .tzst header (negative stream length)")
                plist.append(payload[offset : offset + n])
                offset += n
            tasks.append((entry, plist))
        if pos != size or offset != len(payload):
            raise CodecError(f"{what}: corrupt .tzst header (segments do not cover the file)")
        out = bytearray(size)
        view = memoryview(out)

        def run(task: tuple[dict[str, Any], list[memoryview]]) -> None:
            entry, plist = task
            arr = _decode_segment(entry, plist, base_view, base_spans, base_dict)
            start, end = int(entry["start"]), int(entry["end"])
            if len(arr) != end - start:
                raise CodecError(f"{what}: corrupt .tzst file (segment {entry.get('name')!r} decodes to the wrong length)")
            view[start:end] = memoryview(arr).cast("B")
            if check_tensors and hashlib.sha256(view[start:end]).hexdigest() != entry["sha256"]:
                raise CodecError(f"{what}: tensor {entry.get('name')!r} fails its sha256 check (corrupt file)")

        n_threads = threads or default_threads()
        if n_threads > 1:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(run, tasks))
        else:
            for task in tasks:
                run(task)
    except CodecError as exc:
        if isinstance(exc, BaseMismatchError) or str(exc).startswith(what):
            raise
        raise type(exc)(f"{what}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, MemoryError):
        raise CodecError(f"{what}: corrupt .tzst header") from None
    if hashlib.sha256(view).hexdigest() != original["sha256"]:
        raise CodecError(f"{what}: decoded bytes fail the sha256 check (corrupt file)")
    return out  # a bytearray: no copy


# --- files ---------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CodecError(f"{path}: {exc.strerror or exc}") from None


def find_base(path: Path, header: dict[str, Any]) -> Path:
    """The file next to ``path`` that a delta file's header names as its base (either form)."""
    want = header["base"]
    folder = Path(path).parent
    try:
        name = raw_name(str(want["name"]))
        if "/" in name or not want["sha256"]:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CodecError(f"{path}: corrupt .tzst header (base)") from None
    candidates = [folder / name, folder / (name + SUFFIX)]
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        raise BaseMismatchError(f"{path}: delta base {name} not found next to it (looked for {name} and {name}{SUFFIX})")
    for c in existing:
        sha = read_header(c)["original"]["sha256"] if is_tzst_file(c) else _file_sha256(c)
        if sha == want["sha256"]:
            return c
    raise BaseMismatchError(
        f"{path}: delta base {existing[0].name} is a different file (sha256 {sha[:12]}…, expected {want['sha256'][:12]}…)"
    )


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise CodecError(f"{path}: {exc.strerror or exc}") from None


def base_chain(path: Path) -> list[Path]:
    """[keyframe or raw file, ..., path]: the files decoding ``path`` reads, oldest first."""
    chain = [Path(path)]
    seen = {Path(path).resolve()}
    while is_tzst_file(chain[-1]):
        header = read_header(chain[-1])
        if not header.get("base"):
            break
        base = find_base(chain[-1], header)
        if base.resolve() in seen or len(chain) > MAX_CHAIN:
            raise CodecError(f"{path}: delta chain loops or is longer than {MAX_CHAIN}")
        seen.add(base.resolve())
        chain.append(base)
    chain.reverse()
    return chain


def read_safetensors_bytes(path: Path, *, check_tensors: bool = False) -> bytes:
    """The original safetensors bytes of a ``.safetensors`` or ``.safetensors.tzst`` file.

    A delta file's base (and its base, ...) is found next to it and decoded first; each link
    is checked against the sha256 its successor recorded.  Raises CodecError (one line) for a
    missing, corrupt, truncated or mismatched file.
    """
    path = Path(path)
    if not is_tzst_file(path):  # by content: a renamed .tzst is still one
        return _read(path)
    data: bytes | bytearray | None = None
    for link in base_chain(path):  # oldest first: each decoded file is the next one's base
        if not is_tzst_file(link):
            data = _read(link)
            continue
        data = decompress_bytes(_read(link), data, what=str(link), check_tensors=check_tensors and link == path)
    assert data is not None
    return data if isinstance(data, bytes) else bytes(data)  # safetensors.torch.load wants bytes


TMP_SUFFIX = ".tmp"  # a half-written output is <name>.tzst.tmp: the compressor sweeps these after a crash


def tmp_path(out: Path) -> Path:
    """The temp file ``compress_file`` writes before renaming it to ``out`` (``out`` + ``.tmp``)."""
    return out.with_name(out.name + TMP_SUFFIX)


def compress_file(
    src: Path,
    dst: Path | None = None,
    *,
    base: Path | None = None,
    base_data: bytes | bytearray | None = None,
    meta: dict[str, Any] | None = None,
    threads: int | None = None,
    verify: bool = True,
    data: bytes | bytearray | None = None,
) -> dict[str, Any]:
    """Compress ``src`` to ``dst`` (default ``src`` + ``.tzst``), as a delta of ``base`` if given.

    ``base_data`` (and ``data``, for ``src``) may pass original bytes the caller has already.  The
    output is written as ``tmp_path(dst)``, fsynced and, with ``verify``, read back and decoded
    before it is renamed into place (``formats.files.atomic_write``).  Returns the header
    written.  Raises CodecError for an unusable input or a failed verification, OSError from
    the file system; ``dst`` is then untouched.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + SUFFIX)
    if data is None:
        data = _read(src)
    chain = 0
    base_name = None
    if base is not None:
        base = Path(base)
        base_name = raw_name(base)
        if base_data is None:
            base_data = read_safetensors_bytes(base)
        if is_tzst_file(base):
            chain = int(read_header(base).get("chain", 0))
    chunks = compress_bytes(data, name=raw_name(src), base=base_data, base_name=base_name, base_chain=chain, meta=meta, threads=threads)

    def check(tmp: Path) -> None:
        decompress_bytes(tmp.read_bytes(), base_data, what=str(tmp), threads=threads)

    atomic_write(dst, chunks, tmp=tmp_path(dst), check=check if verify else None)
    return json.loads(chunks[0][16:])
