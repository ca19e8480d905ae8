"""Frame coding for ``.safetensors.tzst`` version 2: one frame = up to ``FRAME_BYTES`` of one tensor.

Every tensor is cut into frames at fixed offsets (``k * FRAME_BYTES``), so a tensor and the same
tensor of the previous checkpoint have frames over the same byte ranges: a delta frame needs only
the base's matching frame, and both directions stream with memory bounded by a few frames.

Frame methods (``desc["m"]``), chosen per tensor on a sample (``choose_method``):

* ``zstd`` — one zstd-3 stream: non-float tensors, tensors under ``SMALL_TENSOR``, the
  safetensors header (with the base's header as a raw-content dictionary in a delta file).
* ``b2`` — blosc2: byte shuffle (one stream per byte position of the little-endian words, done
  in SIMD C) then zstd level 1 on each stream separately (``SplitMode.ALWAYS_SPLIT``); streams
  that do not compress are stored as they are.  With ``x`` (delta) the words are first XORed
  with the base's words: sign, exponent and top mantissa bits that did not change become zero
  bytes.  Fastest method, and the smaller one on AdamW moments.
* ``b2e`` (F32, BF16) — the 8-bit exponent is taken out and coded near its order-0 entropy;
  the rest (sign and mantissa, exponent bits zeroed) goes through blosc2 with *bit* shuffle
  (its exponent bit planes are all zero, the top mantissa planes compress a little, the others
  are stored as they are).  zstd's fast match finder takes the many chance matches in a
  low-entropy exponent stream (2-3 bits per byte), which costs ~15% on that stream against
  Huffman coding; so each exponent becomes its offset from the start of the 16 values that
  hold most of them, and pairs of offsets are packed by nibble into two byte streams (``lo``:
  both low nibbles, ``hi``: both high nibbles, almost always 0).  A byte of ~5 bits of entropy
  has no chance matches, and Huffman-coding a pair loses less than coding each value: on
  trained weights the exponents cost within 1% of their order-0 entropy.  ZipNN codes the same
  exponent byte with Huffman alone (Hershcovitch et al., "ZipNN: Lossless Compression for AI
  Models", 2024, arXiv:2411.05239).

The sign stays in the word (not rotated as in version 1): blosc2's shuffle keeps it next to
the exponent, and measured on trained checkpoints that costs nothing on AdamW moments.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import numpy as np
import zstandard

FRAME_BYTES = 8 << 20  # frames of one tensor: a multiple of every dtype width; 8 blosc2 blocks
BLOCK_BYTES = 1 << 20  # blosc2 block: 1 MiB measured best of 256 KiB / 1 MiB / 4 MiB on ratio
SMALL_TENSOR = 4096  # bytes; below this, a tensor is one zstd stream
SAMPLE_BYTES = 64 << 10  # bytes sampled (from the middle of the first tensor of a kind) to choose the method
ZSTD_LEVEL = 3  # non-float data
HEADER_LEVEL = 15  # the safetensors header: small, compressed once
EXP_LEVEL = 1  # the packed exponent nibbles: Huffman literals do the work, no matches to find

WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
# Where the 8-bit exponent sits, and the bits left once it is taken out (sign | mantissa).
_EXP = {"F32": (23, 0x807FFFFF), "BF16": (7, 0x807F)}

_blosc2: Any = None
_blosc2_lock = threading.Lock()


class FrameError(Exception):
    """A frame does not decode: corrupt payload, wrong lengths, or a method this version does not know."""


def _b2() -> Any:
    """blosc2, imported on first use (its import pulls in numexpr and httpx: ~0.5 s)."""
    global _blosc2
    if _blosc2 is None:
        with _blosc2_lock:
            if _blosc2 is None:
                # blosc2 imports numexpr, which logs "NumExpr defaulting to N threads." at INFO in
                # every sink and worker log; tritter does not use numexpr
                logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
                import blosc2  # noqa: PLC0415

                # python-blosc2 holds the GIL through compress2/decompress2 unless told otherwise,
                # so frames coded on a thread pool ran one at a time (2 threads were slower than 1).
                blosc2.set_releasegil(True)
                _blosc2 = blosc2
    return _blosc2


def frame_ranges(nbytes: int) -> list[tuple[int, int]]:
    """[(lo, hi), ...] byte ranges of the frames of a tensor of ``nbytes`` (one empty frame for 0)."""
    if nbytes == 0:
        return [(0, 0)]
    return [(lo, min(lo + FRAME_BYTES, nbytes)) for lo in range(0, nbytes, FRAME_BYTES)]


# --- primitives -------------------------------------------------------------------------------


_local = threading.local()  # zstd contexts are not thread-safe, and costly to create per frame


def _zstd(data: Any, level: int, dict_data: zstandard.ZstdCompressionDict | None = None) -> bytes:
    if dict_data is not None:
        return zstandard.ZstdCompressor(level=level, dict_data=dict_data, write_checksum=False, write_content_size=True).compress(data)
    cache = _local.__dict__.setdefault("c", {})
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
    return c.compress(data)


def _unzstd(payload: Any, length: int, dict_data: zstandard.ZstdCompressionDict | None = None) -> bytes:
    if dict_data is None:
        d = _local.__dict__.get("d")
        if d is None:
            d = _local.d = zstandard.ZstdDecompressor()
    else:
        d = zstandard.ZstdDecompressor(dict_data=dict_data)
    try:
        out = d.decompress(payload, max_output_size=max(length, 1))
    except zstandard.ZstdError as exc:
        raise FrameError(f"corrupt zstd stream ({exc})") from None
    if len(out) != length:
        raise FrameError("corrupt zstd stream (decoded length mismatch)")
    return out


def _blosc(words: np.ndarray, bitshuffle: bool) -> bytes:
    b2 = _b2()
    return b2.compress2(
        words, codec=b2.Codec.ZSTD, clevel=1, typesize=words.itemsize,
        filters=[b2.Filter.BITSHUFFLE if bitshuffle else b2.Filter.SHUFFLE],
        splitmode=b2.SplitMode.ALWAYS_SPLIT, blocksize=BLOCK_BYTES, nthreads=1,
    )


def _unblosc(payload: Any, out: np.ndarray) -> None:
    b2 = _b2()
    try:
        n = b2.decompress2(payload, dst=out, nthreads=1)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise FrameError(f"corrupt blosc2 chunk ({exc})") from None
    if n is not None and int(n) != out.nbytes:
        raise FrameError("corrupt blosc2 chunk (decoded length mismatch)")


def _window_base(e: np.ndarray) -> int:
    """The exponent value b such that [b, b + 16) holds the most values (so most offsets fit a nibble).

    Counted on every 16th value: the window only steers the packing (any b decodes exactly),
    and ``np.bincount`` widens its input to int64, which over every value costs more than the
    rest of the packing.
    """
    counts = np.bincount(e[::16], minlength=256)
    windows = np.convolve(np.concatenate([counts, counts[:15]]), np.ones(16, np.int64), mode="valid")[:256]
    return int(np.argmax(windows))


def _pack_exponents(e: np.ndarray) -> tuple[bytes, bytes, int]:
    """Exponent bytes -> (lo stream, hi stream, window base): see the module docstring.

    Each exponent becomes its offset ``r = e - base`` (mod 256); pairs (a, b) of offsets are packed
    as ``lo = a_lo << 4 | b_lo`` and ``hi = a_hi << 4 | b_hi`` (nibbles), working on the pairs as
    little-endian uint16 so numpy never does a strided byte copy.
    """
    base = _window_base(e)
    if len(e) % 2:
        e = np.append(e, np.uint8(base))  # padding offset 0
    lo_t, hi_t = _pack_tables(base)
    pairs = e.view(np.uint16)  # a | b << 8: one table lookup per pair does the subtraction and the nibble packing
    lo = np.take(lo_t, pairs, mode="clip")
    hi = np.take(hi_t, pairs, mode="clip")
    return _zstd(lo, EXP_LEVEL), _zstd(hi, EXP_LEVEL), base


@functools.lru_cache(maxsize=16)
def _pack_tables(base: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) tables, 65536 uint8 each: exponent pair ``a | b << 8`` -> its packed nibble bytes.

    With offsets ``r = e - base`` (mod 256): ``lo = ra_lo << 4 | rb_lo``, ``hi = ra_hi << 4 | rb_hi``
    (see ``_pack_exponents``).  Cached per window base.
    """
    i = np.arange(65536, dtype=np.uint32)
    ra, rb = ((i & 0xFF) - base) & 0xFF, ((i >> 8) - base) & 0xFF
    lo = (((ra & 0x0F) << 4) | (rb & 0x0F)).astype(np.uint8)
    hi = ((ra & 0xF0) | (rb >> 4)).astype(np.uint8)
    return lo, hi


def _unpack_exponents(lo_p: Any, hi_p: Any, base: int, n: int) -> np.ndarray:
    half = (n + 1) // 2
    lo = np.frombuffer(_unzstd(lo_p, half), np.uint8)
    hi = np.frombuffer(_unzstd(hi_p, half), np.uint8)
    a = (hi & np.uint8(0xF0)) | (lo >> np.uint8(4))
    b = (hi << np.uint8(4)) | (lo & np.uint8(0x0F))
    r16 = b.astype(np.uint16)
    r16 <<= np.uint16(8)
    r16 |= a
    r = r16.view(np.uint8)[:n]
    return r + np.uint8(base)


@functools.lru_cache(maxsize=16)
def _pair_table(ebase: int, dtype: str) -> np.ndarray:
    """65536-entry table: (hi << 8 | lo) of a packed exponent pair -> both words' exponent bits.

    The inverse of ``_pack_exponents`` (nibble pair, window base ``ebase``) fused with placing
    each exponent at its bit position: entry = ``a << shift | b << (shift + word bits)``, so one
    gather and one OR put a pair of exponents back into a pair of words (a uint64 for F32, a
    uint32 for BF16).  Cached: a file has a handful of window bases.
    """
    width = WIDTH[dtype]
    wide = np.uint64 if width == 4 else np.uint32
    shift = _EXP[dtype][0]
    i = np.arange(65536, dtype=np.uint32)
    lo, hi = i & 0xFF, i >> 8
    a = (((hi & 0xF0) | (lo >> 4)) + ebase) & 0xFF
    b = ((((hi << 4) & 0xF0) | (lo & 0x0F)) + ebase) & 0xFF
    return (a.astype(wide) << wide(shift)) | (b.astype(wide) << wide(shift + 8 * width))


def _merge_exponents(out: np.ndarray, lo: np.ndarray, hi: np.ndarray, ebase: int, dtype: str, count: int) -> None:
    """OR the ``count`` exponents packed as (``lo``, ``hi``) nibble streams into the words of ``out``.

    Pairs of words are handled as one wide word through ``_pair_table`` (one gather, one OR over
    the frame) instead of unpacking, widening and shifting each exponent (five passes).
    """
    width = WIDTH[dtype]
    wide = np.uint64 if width == 4 else np.uint32
    table = _pair_table(ebase, dtype)
    idx = hi.astype(np.uint16)
    idx <<= np.uint16(8)
    idx |= lo
    even = count // 2
    if even:
        pairs = out[: even * 2 * width].view(wide)
        # np.take into a reused buffer with mode="clip" (no bounds errors to raise: every uint16 is
        # an index) is ~2x faster than fancy indexing, and reusing spares the page faults.
        key = ("pairs", wide)
        buf = _local.__dict__.get(key)
        if buf is None or len(buf) < even:
            buf = np.empty(max(even, FRAME_BYTES // (2 * width)), wide)
            _local.__dict__[key] = buf
        gathered = np.take(table, idx[:even], out=buf[:even], mode="clip")
        np.bitwise_or(pairs, gathered, out=pairs)
    if count % 2:  # the last word's pair has a padding offset in its high half: keep the low half
        last = out[(count - 1) * width : count * width].view(UINT[width])
        last |= UINT[width](int(table[idx[even]]) & ((1 << (8 * width)) - 1))


# --- encode -----------------------------------------------------------------------------------


def encode_frame(raw: np.ndarray, dtype: str, method: str, base: np.ndarray | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Encode one frame.

    ``raw``: the frame's original bytes (uint8, length a multiple of the dtype width for b2/b2e);
    ``method``: ``zstd`` | ``b2`` | ``b2e``; ``base``: the base tensor's bytes over the same range
    for a delta (XOR) frame, else None.  Returns (descriptor, payload parts): ``desc["n"]`` is the
    payload length in bytes, ``desc["len"]`` the decoded length.
    """
    n = raw.nbytes
    if method == "zstd":
        p = _zstd(raw, ZSTD_LEVEL)
        return {"m": "zstd", "n": len(p), "len": n}, [p]
    width = WIDTH[dtype]
    words = raw.view(UINT[width])
    desc: dict[str, Any] = {"m": method, "len": n}
    if base is not None:
        words = words ^ base.view(UINT[width])
        desc["x"] = 1
    if method == "b2":
        p = _blosc(words, bitshuffle=False)
        desc["n"] = len(p)
        return desc, [p]
    if method == "b2e":
        shift, keep = _EXP[dtype]
        utype = UINT[width]
        e = (words >> utype(shift)).astype(np.uint8)  # the sign is above bit 7: the cast drops it
        lo, hi, ebase = _pack_exponents(e)
        rest = _blosc(words & utype(keep), bitshuffle=True)
        desc.update(n=len(lo) + len(hi) + len(rest), e=[len(lo), len(hi), ebase])
        return desc, [lo, hi, rest]
    raise ValueError(f"unknown frame method {method!r}")


def choose_method(raw: np.ndarray, dtype: str, base: np.ndarray | None, allow_exp: bool = True) -> tuple[str, bool]:
    """(method, use the base) for a float tensor, by encoding a sample every candidate way.

    ``raw``: the whole tensor or a sample of it (``SAMPLE_BYTES`` from its middle); ``base``: the
    base's bytes over the same range, or None.  Candidates: ``b2``, with a base ``b2`` of the XOR,
    and if ``allow_exp`` ``b2e`` (F32/BF16).  The smallest wins (ties go to the faster ``b2``).
    Which tensors may use ``b2e`` is the container's rule (``tzst_v2.exp_coding_allowed``).
    """
    sizes: list[tuple[int, int, str, bool]] = []
    sizes.append((encode_frame(raw, dtype, "b2")[0]["n"], 0, "b2", False))
    if allow_exp and dtype in _EXP:
        sizes.append((encode_frame(raw, dtype, "b2e")[0]["n"], 1, "b2e", False))
    if base is not None:
        sizes.append((encode_frame(raw, dtype, "b2", base)[0]["n"], 0, "b2", True))
    _, _, method, delta = min(sizes)
    return method, delta


def encode_header(raw: bytes | memoryview, base_header: bytes | None) -> tuple[dict[str, Any], list[bytes]]:
    """The safetensors header (8-byte length + JSON): zstd-15, with the base's header as dictionary."""
    d = zstandard.ZstdCompressionDict(bytes(base_header), dict_type=zstandard.DICT_TYPE_RAWCONTENT) if base_header else None
    p = _zstd(raw, HEADER_LEVEL, d)
    desc: dict[str, Any] = {"m": "zstd", "n": len(p), "len": len(raw)}
    if d is not None:
        desc["dict"] = "base-header"
    return desc, [p]


# --- decode -----------------------------------------------------------------------------------


def decode_frame(desc: dict[str, Any], payload: memoryview, out: np.ndarray, dtype: str | None, base: np.ndarray | None = None,
                 base_header: bytes | None = None) -> None:
    """Decode one frame into ``out`` (uint8, exactly ``desc["len"]`` bytes, written in place).

    ``base``: the base tensor's bytes over the same range, needed when ``desc["x"]``;
    ``base_header``: the base's safetensors header, needed for ``desc["dict"]``.  Raises
    FrameError for a corrupt payload or a descriptor this version does not know.
    """
    method, n = desc.get("m"), int(desc["len"])
    if out.nbytes != n or len(payload) != int(desc["n"]):
        raise FrameError("corrupt frame (lengths do not match the header)")
    if method == "zstd":
        d = None
        if desc.get("dict") == "base-header":
            if base_header is None:
                raise FrameError("corrupt frame (header dictionary needs a base)")
            d = zstandard.ZstdCompressionDict(base_header, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        out[:] = np.frombuffer(_unzstd(payload, n, d), np.uint8)
        return
    if method not in ("b2", "b2e") or dtype not in WIDTH or n % WIDTH[dtype]:
        raise FrameError(f"unknown frame method {method!r} for dtype {dtype!r} (written by a newer tritter?)")
    utype = UINT[WIDTH[dtype]]
    if method == "b2":
        _unblosc(payload, out)
    else:
        if dtype not in _EXP:
            raise FrameError(f"frame method b2e on dtype {dtype!r}")
        try:
            n_lo, n_hi, ebase = (int(x) for x in desc["e"])
        except (KeyError, TypeError, ValueError):
            raise FrameError("corrupt frame descriptor (exponent streams)") from None
        if min(n_lo, n_hi, ebase) < 0 or ebase > 255 or n_lo + n_hi > len(payload):
            raise FrameError("corrupt frame descriptor (exponent stream lengths)")
        count = n // WIDTH[dtype]
        half = (count + 1) // 2
        lo = np.frombuffer(_unzstd(payload[:n_lo], half), np.uint8)
        hi = np.frombuffer(_unzstd(payload[n_lo : n_lo + n_hi], half), np.uint8)
        _unblosc(payload[n_lo + n_hi :], out)
        _merge_exponents(out, lo, hi, ebase, dtype, count)
    if desc.get("x"):
        if base is None or base.nbytes != n:
            raise FrameError("delta frame without its base range")
        np.bitwise_xor(out, base, out=out)
