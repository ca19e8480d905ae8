"""Shared by the checkpoint-compression tests: real trained checkpoints (made once per session) and small synthetic ones."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load, save

from conftest import Daemon, ctl

_cache: dict[str, Path] = {}


def real_checkpoints() -> list[Path]:
    """step-3 and step-6 of a real tiny run (trained once per test session by a real tritterd)."""
    if "dir" not in _cache:
        root = Path(tempfile.mkdtemp(prefix="tt-ck-", dir="/tmp"))
        atexit.register(shutil.rmtree, root, True)
        daemon = Daemon(root / "home").start()
        try:
            run_id = ctl(daemon.home, "start", "--start", "tiny", "--end", "tiny", "--steps", "6", "--checkpoint-every", "3").stdout.strip().split()[-1]
            ctl(daemon.home, "wait", run_id, "--timeout", "180")
        finally:
            daemon.stop()
        out = root / "ckpts"
        out.mkdir()
        for p in sorted((daemon.home / "runs" / run_id / "checkpoints").glob("step-*.safetensors")):
            shutil.copy2(p, out / p.name)
        _cache["dir"] = out
    files = sorted(_cache["dir"].glob("step-*.safetensors"))
    assert len(files) >= 2, files
    return files


def to_bf16(data: bytes) -> bytes:
    from tritter.formats.codec import safetensors_metadata

    tensors = load(data)
    return save({k: (v.to(torch.bfloat16) if v.dtype == torch.float32 else v) for k, v in tensors.items()}, metadata=safetensors_metadata(data))


def synthetic(seed: int = 0, scale: float = 1.0, base: bytes | None = None) -> bytes:
    """A small checkpoint-like file with every dtype the codec treats specially (and edge values)."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    if base is not None:  # a "next step": the base's tensors nudged a little
        for k, v in load(base).items():
            tensors[k] = (v + (torch.randn(v.shape, generator=g) * 1e-4).to(v.dtype)) if v.is_floating_point() else v
        return save(tensors, metadata={"format": "synthetic", "seed": str(seed)})
    tensors["w.f32"] = torch.randn(64, 96, generator=g) * scale
    tensors["w.bf16"] = (torch.randn(64, 96, generator=g) * scale).to(torch.bfloat16)
    tensors["w.f16"] = (torch.randn(40, 70, generator=g) * scale).to(torch.float16)
    tensors["w.f64"] = torch.randn(33, 65, generator=g, dtype=torch.float64)
    tensors["optim.0.exp_avg_sq"] = torch.rand(4096, generator=g) ** 4
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-40, 3.4e38] * 700)
    tensors["edge.f32"] = special
    tensors["small.f32"] = torch.randn(7, generator=g)
    tensors["empty.f32"] = torch.empty(0)
    tensors["ids.i64"] = torch.arange(1000, dtype=torch.int64)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["flag"] = torch.tensor([True, False])
    return save(tensors, metadata={"format": "synthetic", "seed": str(seed)})


def flip_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x5A
    path.write_bytes(bytes(data))


