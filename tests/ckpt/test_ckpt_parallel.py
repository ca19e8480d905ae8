"""Coding frames on several threads: batching, order, errors, buffers; the same file as one thread."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from ckpt_helpers import synthetic
from tritter.formats import codec, tzst_frames, tzst_v2


def test_batches_keep_order_and_stay_within_the_byte_budget() -> None:
    costs = [100] * 30 + [5000] + [400, 700, 300] + [2000] * 3
    got = list(tzst_v2.batches(((c, i) for i, c in enumerate(costs)), batch_bytes=1000))
    assert [i for b in got for i in b] == list(range(len(costs)))  # every item once, in order
    for b in got:
        size = sum(costs[i] for i in b)
        assert size <= 1000 or len(b) == 1, (b, size)  # only a lone oversized item exceeds it
    assert len(got[0]) == 10  # small items share a batch
    assert [len(b) for b in got[-3:]] == [1, 1, 1]


def test_ordered_map_yields_in_order_on_threads_and_runs_in_parallel() -> None:
    both = threading.Barrier(2, timeout=10)
    seen: set[int] = set()

    def job(i: int) -> int:
        seen.add(threading.get_ident())
        if i in (0, 1):
            both.wait()  # the first two batches must be running at the same time
        return i * i

    items = [(8 << 20, lambda i=i: job(i)) for i in range(12)]
    assert list(tzst_v2.ordered_map(iter(items), threads=2)) == [i * i for i in range(12)]
    assert len(seen) == 2


def test_ordered_map_raises_a_jobs_error() -> None:
    def boom() -> None:
        raise codec.CodecError("frame 3 is corrupt")

    items = [(10, lambda: 1), (10, lambda: 2), (10, boom), (10, lambda: 4)]
    with pytest.raises(codec.CodecError, match="frame 3"):
        list(tzst_v2.ordered_map(iter(items), threads=2))


def test_blosc2_runs_without_the_gil() -> None:
    # python-blosc2 keeps the GIL during compress2/decompress2 unless told otherwise, which
    # made frames on a thread pool run one at a time; the codec turns that off on import.
    b2 = tzst_frames._b2()
    previous = b2.set_releasegil(True)
    assert previous is True


def test_compress_bytes_grows_its_buffer_when_the_estimate_is_short(monkeypatch) -> None:
    data = synthetic(4)
    expected = bytes(codec.compress_bytes(data, threads=1))
    real = codec.output_buffer
    calls: list[int] = []

    def tiny_first(n: int) -> np.ndarray:
        calls.append(n)
        return real(64 if len(calls) == 1 else n)

    monkeypatch.setattr(codec, "output_buffer", tiny_first)
    assert bytes(codec.compress_bytes(data, threads=1)) == expected
    assert len(calls) >= 2


def test_a_given_base_sha256_must_match_the_delta() -> None:
    a = synthetic(5)
    b = synthetic(6, base=a)
    sha_a = hashlib.sha256(a).hexdigest()
    blob = bytes(codec.compress_bytes(b, base=a, base_name="a.safetensors", base_sha256=sha_a))
    assert codec.header_of(blob)["base"]["sha256"] == sha_a
    assert bytes(codec.decompress_bytes(blob, a, base_sha256=sha_a)) == b
    with pytest.raises(codec.BaseMismatchError, match="does not match"):
        codec.decompress_bytes(blob, a, base_sha256="0" * 64)


def test_threads_decode_multi_frame_tensors_and_catch_any_damaged_frame(monkeypatch) -> None:
    """Tensors cut into many frames, decoded on 3 threads (frames of one tensor on different
    workers): the result is exact, and damage in any frame's payload is a CodecError, never
    wrong bytes (a segment is checked only once all its frames are in)."""
    import random

    monkeypatch.setattr(tzst_frames, "FRAME_BYTES", 4096)
    monkeypatch.setattr(tzst_v2, "BATCH_BYTES", 4096)  # one frame per job: neighbours run concurrently
    data = synthetic(21)
    blob = bytes(codec.compress_bytes(data, threads=3))
    header = codec.header_of(blob)
    assert max(len(s["streams"]) for s in header["segments"]) >= 5
    assert bytes(codec.decompress_bytes(blob, threads=3)) == data
    payload_end = 16 + header["payload_bytes"]
    rnd = random.Random(1)
    for pos in [rnd.randrange(16, payload_end) for _ in range(60)]:
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        try:
            out = codec.decompress_bytes(bytes(bad), threads=3)
        except codec.CodecError:
            continue
        assert bytes(out) == data  # only possible where the flipped bit is never used
