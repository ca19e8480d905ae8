"""A delta is never built on a damaged base: compress refuses (CLI: one line, exit 2) and the
compressor sink writes a keyframe instead."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from conftest import tool
from tritter.clients.ckpt.compressor import Compressor, CompressSettings
from tritter.formats import codec
from tritter.protocol.events import CheckpointEvent, RunEvent
from tritter.protocol.home import Layout

RUN = "20260101-000000-dmgd"


def _tensors(seed: int, like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if like is not None:  # one optimizer step later: tiny moves, so the XOR delta pays
        return {k: v + v.abs() * 1e-6 * torch.randn(v.shape, generator=g) for k, v in like.items()}
    w = torch.randn(256, 512, generator=g) * 0.02
    m = torch.randn(256, 512, generator=g) * 1e-3
    return {"model.w": w, "optim.0.exp_avg": m, "optim.0.exp_avg_sq": m * m}


def _silently_damaged(path: Path) -> None:
    """Flip one payload bit of ``path`` (a .tzst) such that every frame still decodes and only
    the segment's xxh3 tells: the damage the codec's frame checks cannot see."""
    blob = path.read_bytes()
    payload_end = 16 + codec.header_of(blob)["payload_bytes"]
    for pos in range(payload_end - 1, 16, -97):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        try:
            codec.decompress_bytes(bytes(bad), threads=1)
        except codec.CodecError as exc:
            if "xxh3" in str(exc):
                path.write_bytes(bytes(bad))
                return
    raise AssertionError("no silent single-bit damage found")


@pytest.fixture
def damaged_base(tmp_path: Path) -> tuple[Path, Path, bytes]:
    first = _tensors(0)
    a = tmp_path / "step-00000001.safetensors"
    a.write_bytes(save(first))
    codec.compress_file(a)
    a.unlink()
    base = tmp_path / "step-00000001.safetensors.tzst"
    _silently_damaged(base)
    data = save(_tensors(1, like=first))
    b = tmp_path / "step-00000002.safetensors"
    b.write_bytes(data)
    return base, b, data


def test_compress_refuses_a_damaged_base(damaged_base: tuple[Path, Path, bytes]) -> None:
    base, b, _ = damaged_base
    with pytest.raises(codec.CodecError, match="xxh3"):
        codec.compress_file(b, base=base)
    assert not b.with_name(b.name + ".tzst").exists()
    assert not any(p.name.endswith(".tmp") for p in b.parent.iterdir())


def test_cli_delta_from_a_damaged_base_is_one_line(damaged_base: tuple[Path, Path, bytes]) -> None:
    base, b, data = damaged_base
    before = base.read_bytes()
    r = subprocess.run([tool("tritter-ckpt"), "compress", str(b), "--delta-from", str(base)], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "xxh3" in r.stderr and "Traceback" not in r.stderr
    assert b.read_bytes() == data and base.read_bytes() == before  # inputs untouched
    assert not b.with_name(b.name + ".tzst").exists()


def test_sink_writes_a_keyframe_when_the_base_is_damaged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ckpt = home / "runs" / RUN / "checkpoints"
    ckpt.mkdir(parents=True)
    c = Compressor(Layout(home), CompressSettings(keep_last=5, keyframe_every=8, threads=1))
    c.handle(RunEvent(seq=1, run_id=RUN, status="started"))
    first = _tensors(0)
    datas = [save(first), save(_tensors(1, like=first))]
    for step, data in enumerate(datas, start=1):
        if step == 2:
            _silently_damaged(ckpt / "step-00000001.safetensors.tzst")
        path = ckpt / f"step-{step:08d}.safetensors"
        path.write_bytes(data)
        c.handle(CheckpointEvent(seq=step + 1, run_id=RUN, path=f"checkpoints/{path.name}", step=step, stage="tiny",
                                 bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), reason="periodic"))
    out = ckpt / "step-00000002.safetensors.tzst"
    header = codec.read_header(out)
    assert header["base"] is None and header["chain"] == 0  # a keyframe, not a delta of the damaged file
    assert bytes(codec.read_safetensors_bytes(out)) == datas[1]
    assert not (ckpt / "step-00000002.safetensors").exists()
