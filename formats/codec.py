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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from tritter.formats.checkpoints import SUFFIX, is_compressed, raw_name
from tritter.formats.files import atomic_write, file_sha256, source_mode
from tritter.formats.sniff import TZST_MAGIC, is_tzst_file  # formats are decided by content, not name
from tritter.formats import tzst_v2
from tritter.formats.safetensors_index import BaseMismatchError, CodecError, TensorSpan, parse_safetensors, safetensors_metadata
from tritter.protocol.oserrors import os_error_reason

MAGIC = TZST_MAGIC  # b"TRTZCKPT"
FORMAT = "tritter-ckpt-zst"
VERSION = tzst_v2.VERSION  # written; version 1 files are still read
MAX_CHAIN = 1000  # a delta chain longer than this is refused as corrupt (a loop)

# Version 1 decoding (see git history for its encoder; docs/compression.md for the format).
_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_ROTATE = {"F32", "BF16"}  # exponent fits a byte after moving the sign to bit 0
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def default_threads() -> int:
    """Compression threads when the caller gives none: up to 4 (a sink shares the machine with training)."""
    return max(1, min(4, os.cpu_count() or 1))


def decode_threads() -> int:
    """Decoding threads when the caller gives none: every core (resume waits on it; frames decode in parallel)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def output_buffer(nbytes: int) -> np.ndarray:
    """A new uint8 buffer of ``nbytes`` for decoded output, not zero-filled.

    ``bytearray(n)`` zero-fills every page (measured: 47 ms for 85 MB, a third of a whole-file
    decode); ``np.empty`` does not, and numpy asks the kernel for transparent huge pages for
    large arrays, so the decoder's own writes fault the pages in (15 ms for the same 85 MB).
    """
    return np.empty(nbytes, np.uint8)


# --- safetensors ---------------------------------------------------------------------------


# CodecError, BaseMismatchError, TensorSpan, parse_safetensors, safetensors_metadata: formats/safetensors_index.py


# --- byte transforms -----------------------------------------------------------------------


def _rotl(words: np.ndarray, bits: int) -> np.ndarray:
    return (words << words.dtype.type(1)) | (words >> words.dtype.type(bits - 1))


def _rotr(words: np.ndarray, bits: int) -> np.ndarray:
    return (words >> words.dtype.type(1)) | (words << words.dtype.type(bits - 1))


def _join(streams: list[np.ndarray], width: int) -> np.ndarray:
    n = len(streams[0])
    out = np.empty((n, width), dtype=np.uint8)
    for j, s in enumerate(streams):
        out[:, j] = s
    return out.reshape(-1)


# --- streams -------------------------------------------------------------------------------


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
            size = os.fstat(f.fileno()).st_size
            if tzst_v2.is_v2_prefix(first):
                return tzst_v2.read_index(f, size, str(path))
            (hlen,) = struct.unpack_from("<Q", first, 8)
            if 16 + hlen > size:
                raise CodecError(f"{path}: truncated .tzst file (header runs past the end)")
            head = f.read(hlen)
    except OSError as exc:
        raise CodecError(f"{path}: {os_error_reason(exc)}") from None
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


def decompress_bytes(blob: bytes | memoryview, base: bytes | memoryview | None = None, *, what: str = "input", check_tensors: bool = False,
                     threads: int | None = None, base_sha256: str | None = None) -> memoryview:
    """The original safetensors bytes of a .tzst file's contents (a byte view over a new buffer,
    see ``output_buffer``); ``base`` for a delta file, ``base_sha256`` its sha256 if the caller
    has it (else hashed here, ~1 GB/s; a wrong base also fails the segments' xxh3 checks).

    Checks the whole-file sha256 (and with ``check_tensors`` every tensor's); CodecError on any
    mismatch, BaseMismatchError when ``base`` is missing or is the wrong file.
    """
    try:
        if tzst_v2.is_v2_prefix(bytes(memoryview(blob)[:16])):
            return _decompress_v2(blob, base, what, threads, base_sha256)
        return _decompress(blob, base, what, check_tensors, threads)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, MemoryError) as exc:
        raise CodecError(f"{what}: corrupt .tzst file ({type(exc).__name__} decoding its header)") from None


def header_of(blob: bytes | memoryview, what: str = "input") -> dict[str, Any]:
    """The JSON header (version 1) or index (version 2) of a ``.tzst`` file's bytes; CodecError if unusable."""
    if tzst_v2.is_v2_prefix(bytes(memoryview(blob)[:16])):
        return tzst_v2.read_index(tzst_v2._Blob(data=blob), len(blob), what)
    return _parse_container(blob, what)[0]


def _base_tensors(base: memoryview) -> tuple[int, dict[str, TensorSpan]]:
    data_start, spans, _ = parse_safetensors(base)
    return data_start, {s.name: s for s in spans}


def _decompress_v2(blob: bytes | memoryview, base: bytes | memoryview | None, what: str, threads: int | None, base_sha256: str | None) -> memoryview:
    reader = tzst_v2.TzstReader(data=blob, what=what)
    want = reader.index.get("base")
    if want:
        if base is None:
            raise BaseMismatchError(f"{what}: is a delta of {want['name']} and needs it to decode")
        got = base_sha256 or hashlib.sha256(base).hexdigest()
        if got != want["sha256"]:
            raise BaseMismatchError(f"{what}: delta base {want['name']} does not match (sha256 {got[:12]}…, expected {want['sha256'][:12]}…)")
        reader._base = tzst_v2.BytesSource(base)
    out = output_buffer(reader.size)
    tzst_v2.decode_into(reader, out, threads or decode_threads())
    return memoryview(out)


def _decompress(blob: bytes | memoryview, base: bytes | memoryview | None, what: str, check_tensors: bool, threads: int | None) -> memoryview:
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
        out = output_buffer(size)
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

        n_threads = threads or decode_threads()
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
    return view


# --- files ---------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CodecError(f"{path}: {os_error_reason(exc)}") from None


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
    candidates = [folder / (name + SUFFIX), folder / name]  # a .tzst's sha256 is in its header: cheaper first
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
        raise CodecError(f"{path}: {os_error_reason(exc)}") from None


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


def _source(path: Path, seen: frozenset[Path] = frozenset()) -> Any:
    """A ``tzst_v2.Source`` for the original content of ``path`` (either form), deltas resolved lazily.

    A version 2 ``.tzst`` is decoded frame by frame on demand (its base opened the first time a
    delta frame needs it); a raw file is read range by range; a version 1 ``.tzst`` (whole-file
    layout) is decoded into memory.  Raises CodecError/BaseMismatchError.
    """
    path = Path(path)
    if not is_tzst_file(path):
        return tzst_v2.RawFileSource(path)
    header = read_header(path)
    if int(header.get("version", 1)) < 2:
        return tzst_v2.BytesSource(read_safetensors_bytes(path))
    if path.resolve() in seen or len(seen) > MAX_CHAIN:
        raise CodecError(f"{path}: delta chain loops or is longer than {MAX_CHAIN}")
    base = None
    if header.get("base"):
        base_path = find_base(path, header)  # checked against the recorded sha256 now, opened on first use
        base = lambda: _source(base_path, seen | {path.resolve()})  # noqa: E731
    return tzst_v2.TzstReader(path, base=base)


def _close(source: Any) -> None:
    if hasattr(source, "close"):
        source.close()


def read_safetensors_bytes(path: Path, *, check_tensors: bool = False, threads: int | None = None) -> bytes | memoryview:
    """The original safetensors bytes of a ``.safetensors`` or ``.safetensors.tzst`` file
    (``bytes`` for a raw file, a byte view over a new buffer for a decoded one).

    A delta file's base (and its base, ...) is found next to it; each link is checked against
    the sha256 its successor recorded.  Version 2 files are decoded frame by frame with every
    segment's xxh3 checked, and with ``check_tensors`` the whole file's sha256 too (slower:
    ``tritter-ckpt verify``); version 1 files as before (``check_tensors``: each tensor's sha256).
    Raises CodecError (one line) for a missing, corrupt, truncated or mismatched file.
    """
    path = Path(path)
    if not is_tzst_file(path):  # by content: a renamed .tzst is still one
        return _read(path)
    header = read_header(path)
    if int(header.get("version", 1)) >= 2:
        reader = _source(path)
        try:
            out = output_buffer(reader.size)
            tzst_v2.decode_into(reader, out, threads or decode_threads())
        finally:
            _close(reader)
        if check_tensors and hashlib.sha256(out).hexdigest() != header["original"]["sha256"]:
            raise CodecError(f"{path}: decoded bytes fail the sha256 check (corrupt file)")
        return memoryview(out)
    data: bytes | memoryview | None = None
    for link in base_chain(path):  # oldest first: each decoded file is the next one's base
        if not is_tzst_file(link):
            data = _read(link)
            continue
        data = decompress_bytes(_read(link), data, what=str(link), check_tensors=check_tensors and link == path)
    assert data is not None
    return data


def iter_original(path: Path, *, threads: int | None = None) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(segment, its original bytes as uint8) in file order, for a version 2 ``.tzst`` file.

    Segments are the safetensors header, each tensor (entries with ``name``, ``dtype``,
    ``shape``, ``start``, ``end``) and gaps; each is checked against its xxh3 before it is
    yielded.  Memory: the segments in flight, never the whole file.  Raises CodecError.
    """
    reader = _source(Path(path))
    if not isinstance(reader, tzst_v2.TzstReader):
        _close(reader)
        raise CodecError(f"{path}: not a version 2 .tzst file")
    try:
        for i, arr in tzst_v2.iter_segments(reader, threads or decode_threads()):
            yield reader.segments[i], arr
    finally:
        _close(reader)


def read_tensors(path: Path, *, threads: int | None = None) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...], np.ndarray]]]:
    """(``__metadata__``, {name: (dtype, shape, bytes as a uint8 array)}) of a checkpoint, either form.

    For the resume path: each tensor is decoded straight into its own array (no copy of the
    whole file, no second copy for a tensor library: ``torch.from_numpy(arr).view(dtype)``).
    dtype is the safetensors name (``F32``, ``BF16``, ``I64``, ...).  Raises CodecError.
    """
    path = Path(path)
    tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
    if is_tzst_file(path) and int(read_header(path).get("version", 1)) >= 2:
        metadata: dict[str, str] = {}
        for seg, arr in iter_original(path, threads=threads):
            if "dtype" in seg:
                tensors[seg["name"]] = (seg["dtype"], tuple(seg["shape"]), arr)
            elif seg["name"] == "__header__":
                metadata = parse_safetensors_header_only(arr)
        return metadata, tensors
    data = read_safetensors_bytes(path)
    _, spans, metadata = parse_safetensors(data)
    for s in spans:
        tensors[s.name] = (s.dtype, s.shape, np.frombuffer(data, np.uint8, s.end - s.start, s.start).copy())
    return metadata, tensors


def parse_safetensors_header_only(head: np.ndarray | bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header alone (8-byte length + JSON); CodecError if malformed."""
    head = bytes(head)
    try:
        meta = json.loads(head[8:]).get("__metadata__") or {}
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise CodecError("not a safetensors header") from None
    return meta


def decompress_file(src: Path, dst: Path, *, threads: int | None = None) -> int:
    """Write the original ``.safetensors`` of ``src`` (a ``.tzst``) to ``dst`` atomically, streaming.

    Every segment is checked before it is written; nothing is renamed into place unless all
    pass.  ``dst`` gets ``src``'s permission bits (a derived file keeps its source's).  Returns
    the bytes written.  Raises CodecError (``dst`` untouched) or OSError.
    """
    src, dst = Path(src), Path(dst)
    if int(read_header(src).get("version", 1)) < 2:
        data = read_safetensors_bytes(src)
        atomic_write(dst, data, mode=source_mode(src))
        return len(data)
    written = [0]

    def write(f: Any) -> None:
        for _, arr in iter_original(src, threads=threads):
            f.write(memoryview(arr))
            written[0] += arr.nbytes

    atomic_write(dst, write, mode=source_mode(src))
    return written[0]


def compress_bytes(
    data: bytes | memoryview,
    *,
    name: str = "checkpoint.safetensors",
    base: bytes | memoryview | None = None,
    base_name: str | None = None,
    base_sha256: str | None = None,
    base_chain: int = 0,
    meta: dict[str, Any] | None = None,
    threads: int | None = None,
    sha256: str | None = None,
    max_ratio: bool = False,
) -> memoryview:
    """Compress safetensors bytes to a version 2 ``.tzst``; returns the file's bytes (a view over
    one new buffer: joining chunks cost a fifth of the compression time on an 85 MB checkpoint).

    With ``base`` (the previous checkpoint's original bytes) the result is a delta file that
    needs that base, found by ``base_name`` next to it, to decode; ``base_sha256`` is the base's
    sha256 if the caller has it (else hashed here, ~1 GB/s); ``base_chain`` is the base's own
    chain depth (0 for a raw file or a keyframe).  ``sha256``: the original's, if known.
    ``max_ratio``: allow the slower exponent coding on AdamW moments too (1-3% smaller, ~2x slower to decode).
    Raises CodecError when ``data`` (or ``base``) is not a safetensors file.
    """
    src = tzst_v2.BytesSource(data)
    b = tzst_v2.BytesSource(base) if base is not None else None
    buf = output_buffer(src.size + src.size // 16 + (1 << 20))  # pages never written are never touched
    used = 0

    def put(chunk: bytes | memoryview) -> None:
        nonlocal buf, used
        n = len(chunk)
        if used + n > buf.nbytes:  # larger than the estimate (an incompressible file, a huge index)
            grown = output_buffer(max(2 * buf.nbytes, used + n))
            grown[:used] = buf[:used]
            buf = grown
        buf[used : used + n] = np.frombuffer(chunk, np.uint8)
        used += n

    if b is not None and base_sha256 is None:
        base_sha256 = hashlib.sha256(b.view).hexdigest()
    tzst_v2.compress(
        src, put, name=name, base=b, base_name=base_name, base_sha256=base_sha256, base_chain=base_chain,
        meta=meta, threads=threads or default_threads(), sha256=sha256, max_ratio=max_ratio,
    )
    return memoryview(buf[:used])


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
    sha256: str | None = None,
    max_ratio: bool = False,
) -> dict[str, Any]:
    """Compress ``src`` to ``dst`` (default ``src`` + ``.tzst``), as a delta of ``base`` if given.

    Streams tensor by tensor: ``src`` and ``base`` (either form) are read range by range, so
    memory stays at a few frames per thread (``base_data``/``data`` may pass original bytes the
    caller already holds instead; ``sha256``: the original's, if the caller has it;
    ``max_ratio``: exponent coding on AdamW moments too, see ``tzst_v2.exp_coding_allowed``).  The output
    is written as ``tmp_path(dst)``, fsynced and, with ``verify``, decoded again (every segment's
    xxh3 checked) before it is renamed into place (``formats.files.atomic_write``).  Returns
    the index written.  Raises CodecError for an unusable input or a failed verification,
    OSError from the file system; ``dst`` is then untouched.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + SUFFIX)
    n_threads = threads or default_threads()
    source: Any = tzst_v2.BytesSource(data) if data is not None else tzst_v2.RawFileSource(src)
    base_src: Any = None
    chain = 0
    base_name = base_sha = None
    try:
        if base is not None:
            base = Path(base)
            base_name = raw_name(base)
            if is_tzst_file(base):
                bh = read_header(base)
                chain, base_sha = int(bh.get("chain", 0)), bh["original"]["sha256"]
            if base_data is not None:
                base_src = tzst_v2.BytesSource(base_data)
                base_sha = base_sha or hashlib.sha256(base_data).hexdigest()
            else:
                base_src = _source(base)
                base_sha = base_sha or _file_sha256(base)
                if isinstance(base_src, tzst_v2.TzstReader):
                    base_src.checked_reads = True  # never build a delta on damaged base bytes
        index: dict[str, Any] = {}

        def write(f: Any) -> None:
            index.update(tzst_v2.compress(source, f.write, name=raw_name(src), base=base_src, base_name=base_name, base_sha256=base_sha,
                                          base_chain=chain, meta=meta, threads=n_threads, sha256=sha256, max_ratio=max_ratio))

        def check(tmp: Path) -> None:
            reader = tzst_v2.TzstReader(tmp, base=base_src)
            try:
                for _ in tzst_v2.iter_segments(reader, n_threads):
                    pass
            finally:
                reader.blob.close()

        # A derived file keeps its source's permissions (a 0600 checkpoint gives a 0600 .tzst).
        atomic_write(dst, write, tmp=tmp_path(dst), check=check if verify else None, mode=source_mode(src))
    finally:
        _close(source)
        if base_src is not None:
            _close(base_src)
    return index
