"""The .tzst format versions: files written by version 1 still decode, version 2 streams in frames."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as torch_load

from ckpt_helpers import synthetic
from tritter.formats import codec, tzst_frames, tzst_v2

FIXTURES = Path(__file__).parent / "fixtures"


def test_version1_fixture_still_decodes(tmp_path: Path) -> None:
    """Files made by the version 1 codec (committed fixtures, a keyframe and a delta) decode byte for byte."""
    for name in ("v1-step-1.safetensors.tzst", "v1-step-2.safetensors.tzst"):
        shutil.copy2(FIXTURES / name, tmp_path / name)  # without the raw files: the delta must use the .tzst base
    assert codec.read_header(tmp_path / "v1-step-1.safetensors.tzst")["version"] == 1
    assert codec.read_header(tmp_path / "v1-step-2.safetensors.tzst")["base"]["name"] == "v1-step-1.safetensors"
    for step in (1, 2):
        expected = (FIXTURES / f"v1-step-{step}.safetensors").read_bytes()
        assert codec.read_safetensors_bytes(tmp_path / f"v1-step-{step}.safetensors.tzst") == expected
    # a version 2 delta on top of a version 1 keyframe (the sink's first checkpoint after an upgrade)
    nxt = synthetic(2, base=(FIXTURES / "v1-step-2.safetensors").read_bytes())
    (tmp_path / "v1-step-3.safetensors").write_bytes(nxt)
    header = codec.compress_file(tmp_path / "v1-step-3.safetensors", base=tmp_path / "v1-step-2.safetensors.tzst")
    (tmp_path / "v1-step-3.safetensors").unlink()
    assert header["version"] == 2 and header["chain"] == 2
    assert codec.read_safetensors_bytes(tmp_path / "v1-step-3.safetensors.tzst") == nxt


@pytest.mark.parametrize("frame_bytes", [4096, 8192 + 8])
def test_multi_frame_tensors_full_and_delta_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame_bytes: int) -> None:
    """Tensors longer than a frame are cut into frames; deltas read the base frame by frame, even
    through a chain of .tzst files; every path gives the original bytes and tensors back."""
    monkeypatch.setattr(tzst_frames, "FRAME_BYTES", frame_bytes)
    a = synthetic(20)
    b = synthetic(21, base=a)
    c = synthetic(22, base=b)
    for step, data in ((1, a), (2, b), (3, c)):
        (tmp_path / f"step-{step:08d}.safetensors").write_bytes(data)
    codec.compress_file(tmp_path / "step-00000001.safetensors", threads=2)
    codec.compress_file(tmp_path / "step-00000002.safetensors", base=tmp_path / "step-00000001.safetensors.tzst", threads=1)
    header = codec.compress_file(tmp_path / "step-00000003.safetensors", base=tmp_path / "step-00000002.safetensors.tzst", threads=2)
    big = next(s for s in header["segments"] if s["name"] == "w.f32")
    assert len(big["streams"]) == -(-(big["end"] - big["start"]) // frame_bytes) > 1
    assert any(d.get("x") for s in header["segments"] for d in s["streams"])
    for p in tmp_path.glob("*.safetensors"):
        p.unlink()
    last = tmp_path / "step-00000003.safetensors.tzst"
    assert codec.read_safetensors_bytes(last) == c
    out = tmp_path / "out.safetensors"
    assert codec.decompress_file(last, out, threads=2) == len(c)
    assert out.read_bytes() == c
    metadata, tensors = codec.read_tensors(last, threads=2)
    expected = torch_load(c)  # safetensors' own reader is the reference
    assert metadata == codec.safetensors_metadata(c)
    assert sorted(tensors) == sorted(expected)
    for name, t in expected.items():
        dtype, shape, got = tensors[name]
        assert shape == tuple(t.shape) and got.tobytes() == t.reshape(-1).view(torch.uint8).numpy().tobytes(), name


def test_exponent_coding_round_trips_edge_values() -> None:
    """b2e frames (exponent taken out) round-trip NaN, inf, zeros, subnormals and odd lengths, in F32 and BF16."""
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3.4e38], np.float32)
    for n in (1, 2, 7, 4097):
        words = np.concatenate([rng.standard_normal(n).astype(np.float32) * 0.02, special]).view(np.uint32)
        for dtype, raw in (("F32", words.view(np.uint8)), ("BF16", (words >> np.uint32(16)).astype(np.uint16).view(np.uint8))):
            for base in (None, raw[::-1].copy()):
                desc, parts = tzst_frames.encode_frame(raw, dtype, "b2e", base)
                out = np.empty(raw.nbytes, np.uint8)
                tzst_frames.decode_frame(desc, memoryview(b"".join(parts)), out, dtype, base)
                assert out.tobytes() == raw.tobytes(), (dtype, n)


def test_trained_weights_choose_exponent_coding_and_moments_shuffle() -> None:
    """The per-kind choice, on tensors shaped like the real thing: Gaussian weights get b2e, and a
    second-moment-like tensor (many exact repeats) gets b2 — the smaller one each time; AdamW
    moments are kept off b2e by name unless ``max_ratio``."""
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal(1 << 16).astype(np.float32) * 0.02).view(np.uint8)
    moments = np.repeat(rng.random(1 << 12).astype(np.float32) ** 4 * 1e-6, 16).view(np.uint8)
    assert tzst_frames.choose_method(weights, "F32", None) == ("b2e", False)
    assert tzst_frames.choose_method(moments, "F32", None) == ("b2", False)
    assert tzst_frames.choose_method(weights, "F32", None, allow_exp=False) == ("b2", False)
    for raw in (weights, moments):
        sizes = {m: tzst_frames.encode_frame(raw, "F32", m)[0]["n"] for m in ("b2", "b2e")}
        assert sizes[tzst_frames.choose_method(raw, "F32", None)[0]] == min(sizes.values())
    assert tzst_v2.exp_coding_allowed("model.layers.0.mlp.up_proj.weight")
    assert not tzst_v2.exp_coding_allowed("optim.3.exp_avg") and not tzst_v2.exp_coding_allowed("optim.3.exp_avg_sq")
    assert tzst_v2.exp_coding_allowed("optim.3.exp_avg_sq", max_ratio=True)
