"""The compressor sink keeps a delta only when it measurably pays against the chain's keyframe."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save

from tritter.clients.ckpt.compressor import DELTA_PAYS, Compressor
from tritter.formats import codec


def _ckpt(seed: int, like: dict[str, torch.Tensor] | None = None, step: float = 0.0) -> dict[str, torch.Tensor]:
    """Weights and AdamW-like moments; with ``like``, the same tensors moved by ``step`` (relative)."""
    g = torch.Generator().manual_seed(seed)
    if like is not None:
        return {k: v + v.abs() * step * torch.randn(v.shape, generator=g) for k, v in like.items()}
    w = torch.randn(256, 512, generator=g) * 0.02
    m = torch.randn(256, 512, generator=g) * 1e-3
    return {"model.w": w, "optim.0.exp_avg": m, "optim.0.exp_avg_sq": m * m}


def _write(folder: Path, step: int, tensors: dict[str, torch.Tensor]) -> Path:
    path = folder / f"step-{step:08d}.safetensors"
    path.write_bytes(save(tensors))
    return path


def test_small_update_keeps_the_delta_and_unrelated_tensors_do_not(tmp_path: Path) -> None:
    first = _ckpt(0)
    a = _write(tmp_path, 1, first)
    codec.compress_file(a)
    keyframe = a.with_name(a.name + ".tzst")

    # one optimizer step later: tiny relative moves, so sign/exponent/top mantissa bits repeat
    b = _write(tmp_path, 2, _ckpt(1, like=first, step=1e-6))
    codec.compress_file(b, base=keyframe)
    delta = b.with_name(b.name + ".tzst")
    assert codec.read_header(delta)["chain"] == 1
    assert delta.stat().st_size <= DELTA_PAYS * keyframe.stat().st_size
    assert Compressor._delta_pays(delta, keyframe)

    # same names and shapes, unrelated values (e.g. a re-initialised run): the XOR gains nothing
    c = _write(tmp_path, 3, _ckpt(7))
    codec.compress_file(c, base=keyframe)
    unrelated = c.with_name(c.name + ".tzst")
    assert unrelated.stat().st_size > DELTA_PAYS * keyframe.stat().st_size
    assert not Compressor._delta_pays(unrelated, keyframe)
    assert codec.read_safetensors_bytes(unrelated) == c.read_bytes()
