"""The .safetensors.tzst codec: bit-exact, better than zstd-3, and loud about bad input."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import zstandard

from ckpt_helpers import flip_byte, real_checkpoints, synthetic, to_bf16
from tritter.formats import checkpoints, codec


def roundtrip(data: bytes, base: bytes | None = None) -> tuple[bytes, bytes]:
    blob = bytes(codec.compress_bytes(data, base=base, base_name="prev.safetensors"))
    assert bytes(codec.decompress_bytes(blob, base, check_tensors=True)) == data
    return blob, data


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_roundtrip_every_dtype(seed: int) -> None:
    data = synthetic(seed)
    roundtrip(data)
    nxt = synthetic(seed + 10, base=data)
    blob, _ = roundtrip(nxt, base=data)
    header = codec.header_of(blob)
    assert header["version"] == 2
    assert header["base"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert any(d.get("x") for s in header["segments"] for d in s["streams"])  # some frames are XOR deltas


def test_single_thread_and_threads_give_the_same_file() -> None:
    data = synthetic(3)
    assert codec.compress_bytes(data, threads=1) == codec.compress_bytes(data, threads=3)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_real_checkpoint_full_and_delta_bit_exact_and_beat_zstd3(dtype: str) -> None:
    prev_path, last_path = real_checkpoints()[-2:]
    prev, last = prev_path.read_bytes(), last_path.read_bytes()
    if dtype == "bf16":
        prev, last = to_bf16(prev), to_bf16(last)
    full, _ = roundtrip(last)
    delta, _ = roundtrip(last, base=prev)
    zstd3 = len(zstandard.ZstdCompressor(level=3).compress(last))
    ratio, ratio_zstd = len(last) / len(full), len(last) / zstd3
    assert ratio > ratio_zstd * 1.05, (ratio, ratio_zstd)
    assert len(delta) <= len(full) * 1.001  # per stream, delta is only used where it is smaller


def test_delta_chain_resolved_from_files(tmp_path: Path) -> None:
    a = synthetic(5)
    b = synthetic(6, base=a)
    c = synthetic(7, base=b)
    for name, data in (("step-00000001", a), ("step-00000002", b), ("step-00000003", c)):
        (tmp_path / f"{name}.safetensors").write_bytes(data)
    codec.compress_file(tmp_path / "step-00000001.safetensors")
    codec.compress_file(tmp_path / "step-00000002.safetensors", base=tmp_path / "step-00000001.safetensors.tzst")
    codec.compress_file(tmp_path / "step-00000003.safetensors", base=tmp_path / "step-00000002.safetensors.tzst")
    for p in tmp_path.glob("*.safetensors"):
        p.unlink()
    last = tmp_path / "step-00000003.safetensors.tzst"
    assert codec.read_header(last)["chain"] == 2
    assert bytes(codec.read_safetensors_bytes(last)) == c
    assert [p.name for p in codec.base_chain(last)] == [f"step-0000000{i}.safetensors.tzst" for i in (1, 2, 3)]
    assert checkpoints.is_checkpoint_file(last) and checkpoints.is_checkpoint_file(tmp_path / "x.safetensors")
    assert not checkpoints.is_checkpoint_file(tmp_path / "x.safetensors.tzst.tmp")
    assert checkpoints.list_checkpoint_files(tmp_path.parent / "nope") == []


def test_corrupt_and_truncated_payload_raise(tmp_path: Path) -> None:
    data = synthetic(8)
    blob = bytes(codec.compress_bytes(data))
    for bad in (blob[:-1], blob[: len(blob) // 2], blob[:10], blob + b"x"):
        with pytest.raises(codec.CodecError):
            codec.decompress_bytes(bad)
    path = tmp_path / "a.safetensors.tzst"
    for offset in (1, 100, 3000):
        path.write_bytes(blob)
        flip_byte(path, offset)
        with pytest.raises(codec.CodecError):
            codec.read_safetensors_bytes(path)
    with pytest.raises(codec.CodecError, match="not a safetensors"):
        codec.compress_bytes(b"hello world, not a checkpoint")


def test_wrong_or_missing_base_is_refused(tmp_path: Path) -> None:
    a, other = synthetic(9), synthetic(10)
    b = synthetic(11, base=a)
    blob = bytes(codec.compress_bytes(b, base=a, base_name="step-00000001.safetensors"))
    with pytest.raises(codec.BaseMismatchError, match="does not match"):
        codec.decompress_bytes(blob, other)
    with pytest.raises(codec.BaseMismatchError, match="needs it"):
        codec.decompress_bytes(blob)
    delta = tmp_path / "step-00000002.safetensors.tzst"
    delta.write_bytes(blob)
    with pytest.raises(codec.BaseMismatchError, match="not found"):
        codec.read_safetensors_bytes(delta)
    (tmp_path / "step-00000001.safetensors").write_bytes(other)
    with pytest.raises(codec.BaseMismatchError, match="different file"):
        codec.read_safetensors_bytes(delta)
    (tmp_path / "step-00000001.safetensors").write_bytes(a)
    assert bytes(codec.read_safetensors_bytes(delta)) == b


def test_compress_file_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    src = tmp_path / "bad.safetensors"
    src.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(codec.CodecError):
        codec.compress_file(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    shutil.rmtree(tmp_path)


def test_any_single_byte_flip_or_cut_is_a_codec_error() -> None:
    """Whatever is damaged (header JSON, lengths, payload), decoding raises CodecError, never garbage."""
    import random

    a = synthetic(12)
    b = synthetic(13, base=a)
    blob = bytes(codec.compress_bytes(b, base=a, base_name="a.safetensors"))
    rnd = random.Random(0)
    positions = list(range(0, 64)) + [rnd.randrange(len(blob)) for _ in range(150)]
    for pos in positions:
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= bit
            try:
                out = codec.decompress_bytes(bytes(bad), a, threads=1)
            except codec.CodecError:
                continue
            assert bytes(out) == b  # a flip in JSON whitespace-free text that changes nothing used
    for cut in [rnd.randrange(len(blob)) for _ in range(30)]:
        with pytest.raises(codec.CodecError):
            codec.decompress_bytes(blob[:cut], a)


def test_engine_resumes_from_a_compressed_delta_checkpoint(tmp_path: Path) -> None:
    """The trainer's loader reads .safetensors.tzst (full and delta) as if it were the raw file."""
    import torch

    from tritter.formats.codec import compress_file
    from tritter.daemon.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
    from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
    from tritter.recipe.presets import get_preset

    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    first = checkpoint_path(tmp_path, 1)
    save_checkpoint(first, model, None, {"step": 1})
    with torch.no_grad():
        model.model.norm.weight.add_(0.5)
    second = checkpoint_path(tmp_path, 2)
    save_checkpoint(second, model, None, {"step": 2})
    compress_file(first)
    compress_file(second, base=first)
    expected = load_checkpoint(second)
    first.unlink()
    second.unlink()
    listed = list_checkpoints(tmp_path)
    assert [p.name for p in listed] == ["step-00000001.safetensors.tzst", "step-00000002.safetensors.tzst"]
    got = load_checkpoint(listed[-1])
    assert got.trainer_state == expected.trainer_state
    assert all(torch.equal(got.model_state[k], v) for k, v in expected.model_state.items())
