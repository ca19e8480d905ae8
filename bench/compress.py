#!/usr/bin/env python
"""Checkpoint compression: tritter's .tzst (full and delta) against gzip, zstd and ZipNN.

Makes real checkpoints by training the ``tiny`` preset through a real ``tritterd`` (in a
temporary home) unless ``--ckpt-dir`` points at existing ``step-*.safetensors`` files, then
measures on the newest checkpoint (full) and on the last two (delta, ``--every`` steps apart):

* fp32: the files as written by the trainer (weights, AdamW moments, RNG);
* bf16: the same files with every F32 tensor cast to BF16 (weights *and* optimizer state).

Per codec: ratio (original bytes / compressed bytes), compress and decompress MB/s (of the
original size, one thread, best of ``--repeat``), and whether the round trip is bit-exact.
ZipNN is used when ``import zipnn`` works (``pip install zipnn`` into the venv; it is not a
project dependency).

    .venv/bin/python bench/compress.py --quick        # 20 steps, no zstd-19: about a minute
    .venv/bin/python bench/compress.py                # 75 steps, checkpoints 25 apart

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from tritter.formats import codec

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def make_checkpoints(home: Path, steps: int, every: int, log: Callable[[str], None]) -> list[Path]:
    """Train the tiny preset through a real tritterd; returns its checkpoint files."""
    home.mkdir(parents=True, exist_ok=True)
    stderr = open(home / "tritterd.stderr", "ab")
    daemon = subprocess.Popen([tool("tritterd"), "--home", str(home)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([tool("tritterctl"), "--home", str(home), "runs"], capture_output=True).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tritterd did not start: see {home / 'tritterd.stderr'}")
            time.sleep(0.2)
        out = subprocess.run(
            [tool("tritterctl"), "--home", str(home), "start", "--start", "tiny", "--end", "tiny", "--steps", str(steps), "--checkpoint-every", str(every)],
            capture_output=True, text=True, check=True,
        )
        run_id = out.stdout.strip().split()[-1]
        log(f"training tiny for {steps} steps (run {run_id}, checkpoint every {every}) ...")
        subprocess.run([tool("tritterctl"), "--home", str(home), "wait", run_id, "--timeout", "1800"], check=True, capture_output=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        stderr.close()
    return sorted((home / "runs" / run_id / "checkpoints").glob("step-*.safetensors"))


def to_bf16(data: bytes) -> bytes:
    import torch
    from safetensors.torch import load, save

    tensors = load(data)
    meta = codec.safetensors_metadata(data)
    cast = {k: (v.to(torch.bfloat16) if v.dtype == torch.float32 else v) for k, v in tensors.items()}
    return save(cast, metadata=meta)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def codecs(include_zstd19: bool, dtype: str) -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    out: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip-6": (lambda d: gzip.compress(d, 6, mtime=0), gzip.decompress),
        "zstd-3": (zstandard.ZstdCompressor(level=3).compress, zstandard.ZstdDecompressor().decompress),
    }
    if include_zstd19:
        out["zstd-19"] = (zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
    try:
        import zipnn  # noqa: PLC0415

        z = zipnn.ZipNN(input_format="byte", bytearray_dtype="float32" if dtype == "fp32" else "bfloat16", threads=1)
        # zipnn 0.5 reorders the bits of its input buffer in place: give it a copy
        out["zipnn"] = (lambda d: z.compress(bytearray(d)), lambda c: bytes(z.decompress(c)))
    except ImportError:
        pass
    out["tritter"] = (
        lambda d: b"".join(codec.compress_bytes(d, threads=1)),
        lambda c: codec.decompress_bytes(c, threads=1),
    )
    return out


def measure(name: str, comp: Callable[[bytes], bytes], decomp: Callable[[bytes], bytes], data: bytes, repeat: int) -> dict[str, Any]:
    packed, tc = timed(lambda: comp(data), repeat)
    restored, td = timed(lambda: decomp(packed), repeat)
    mb = len(data) / 1e6
    return {
        "codec": name,
        "ratio": round(len(data) / len(packed), 4),
        "compress_MBps": round(mb / tc, 1),
        "decompress_MBps": round(mb / td, 1),
        "bit_exact": bytes(restored) == data,
        "bytes": len(data),
        "compressed": len(packed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, checkpoints 10 apart, no zstd-19, 1 repeat")
    parser.add_argument("--steps", type=int, help="training steps (default 75; --quick 20)")
    parser.add_argument("--every", type=int, help="steps between checkpoints (default 25; --quick 10)")
    parser.add_argument("--repeat", type=int, help="timing repeats, best taken (default 2; --quick 1)")
    parser.add_argument("--ckpt-dir", type=Path, help="use the step-*.safetensors files here instead of training")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 75)
    every = args.every or (10 if args.quick else 25)
    repeat = args.repeat or (1 if args.quick else 2)

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    tmp = None
    try:
        if args.ckpt_dir:
            files = sorted(args.ckpt_dir.glob("step-*.safetensors"))
        else:
            tmp = Path(tempfile.mkdtemp(prefix="tt-bench-", dir="/tmp"))
            files = make_checkpoints(tmp / "home", steps, every, log)
        if len(files) < 2:
            raise SystemExit(f"need at least two checkpoints, found {len(files)}")
        prev, last = files[-2].read_bytes(), files[-1].read_bytes()
        variants = {"fp32": (prev, last)}
        variants["bf16"] = (to_bf16(prev), to_bf16(last))
        results: list[dict[str, Any]] = []
        for dtype, (p, cur) in variants.items():
            for name, (c, d) in codecs(not args.quick, dtype).items():
                r = measure(name, c, d, cur, repeat)
                r.update(dtype=dtype, mode="full")
                results.append(r)
                log(f"  {dtype} {name:<14} {r['ratio']:.3f}x")
            r = measure(
                "tritter-delta",
                lambda data, p=p: b"".join(codec.compress_bytes(data, base=p, base_name="prev.safetensors", threads=1)),
                lambda blob, p=p: codec.decompress_bytes(blob, p, threads=1),
                cur, repeat,
            )
            r.update(dtype=dtype, mode="delta")
            results.append(r)
            log(f"  {dtype} tritter-delta  {r['ratio']:.3f}x")

        log("")
        log(f"checkpoints: {files[-2].name} -> {files[-1].name} ({len(last) / 1e6:.1f} MB fp32), one thread, best of {repeat}")
        log(f"{'dtype':<5} {'codec':<14} {'mode':<5} {'ratio':>7} {'comp MB/s':>10} {'decomp MB/s':>12} {'exact':>6}")
        for r in results:
            log(f"{r['dtype']:<5} {r['codec']:<14} {r['mode']:<5} {r['ratio']:>6.3f}x {r['compress_MBps']:>10.1f} {r['decompress_MBps']:>12.1f} {str(r['bit_exact']):>6}")
        summary = {
            "bench": "compress",
            "quick": args.quick,
            "checkpoints": [files[-2].name, files[-1].name],
            "steps_apart": (codec.checkpoint_step(files[-1]) or 0) - (codec.checkpoint_step(files[-2]) or 0),
            "fp32_bytes": len(last),
            "repeat": repeat,
            "cpu_count": os.cpu_count(),
            "results": results,
        }
        for dtype in variants:
            by = {r["codec"]: r["ratio"] for r in results if r["dtype"] == dtype}
            summary[f"{dtype}_beats_zstd3"] = by["tritter"] > by["zstd-3"]
            if "zipnn" in by:
                summary[f"{dtype}_beats_zipnn"] = by["tritter"] >= by["zipnn"]
                summary[f"{dtype}_delta_beats_zipnn"] = by["tritter-delta"] >= by["zipnn"]
        print(json.dumps(summary))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
