#!/usr/bin/env python
"""Peak memory of compressing / decompressing a ``100m``-preset checkpoint, each step in its own process.

Used by ``bench/compress.py --memory`` (or run alone).  The checkpoint is built on CPU from the
``100m`` preset's real parameter names and shapes: random-init weights and *synthetic* AdamW
moments of the right shapes (``exp_avg`` ~ N(0, 1e-3), ``exp_avg_sq`` = its square-ish), not a
trained run.  A second checkpoint ("one step later": weights nudged by 2e-5·N(0,1), moments
updated with beta1 = 0.9, beta2 = 0.999) gives the delta case.

Each measured operation runs in a fresh ``python`` whose ``ru_maxrss`` (peak resident set, KiB on
Linux) is reported, next to the same figure for a process that only imports the codec: the
difference is what the operation itself holds (the sink is set against a process that imports
the sink).  The bound checked: peak above the baseline ≤ 2 × the largest tensor + 64 MiB ×
(1 + threads) (frames in flight: two per thread, each with its input, base, XOR and output).

    .venv/bin/python bench/compress_memory.py [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUILD = r"""
import sys, torch
from safetensors.torch import save_file
from tritter.daemon.engine.model import LlamaForCausalLM
from tritter.recipe.presets import get_preset
torch.manual_seed(0)
model = LlamaForCausalLM(get_preset("100m").shape)
out = {}
for i, (name, p) in enumerate(model.named_parameters()):
    w = p.detach().clone()
    if w.dim() > 1:
        torch.nn.init.normal_(w, std=0.02)
    m = torch.randn_like(w) * 1e-3
    v = m * m + torch.rand_like(w) * 1e-8
    out[name] = w
    out[f"optim.{i}.exp_avg"] = m
    out[f"optim.{i}.exp_avg_sq"] = v
del model
save_file(out, sys.argv[1], metadata={"format": "bench-100m"})
g = {k: torch.randn_like(v) * 1e-3 for k, v in out.items() if not k.startswith("optim.")}
names = [k for k in out if not k.startswith("optim.")]
for i, k in enumerate(names):
    out[k] = out[k] + torch.randn_like(out[k]) * 2e-5
    m, v = out[f"optim.{i}.exp_avg"], out[f"optim.{i}.exp_avg_sq"]
    out[f"optim.{i}.exp_avg"] = 0.9 * m + 0.1 * g[k]
    out[f"optim.{i}.exp_avg_sq"] = 0.999 * v + 0.001 * g[k] * g[k]
save_file(out, sys.argv[2], metadata={"format": "bench-100m"})
"""

MEASURE = r"""
import resource, sys, time, json
from pathlib import Path
from tritter.formats import codec
op, a, b, threads = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
extra = {}
if op == "compress":
    codec.compress_file(a, b, threads=threads, verify=False)
elif op == "compress-delta":
    codec.compress_file(a, b, base=Path(sys.argv[5]), threads=threads, verify=False)
elif op == "decompress":
    codec.decompress_file(a, b, threads=threads)
elif op == "read-tensors":
    meta, tensors = codec.read_tensors(a, threads=threads)
elif op == "sink":
    # The compressor sink on two checkpoint events of one run: a keyframe, then a delta of it.
    import shutil
    from tritter.clients.ckpt.compressor import Compressor, CompressSettings
    from tritter.formats.files import file_sha256
    from tritter.protocol.events import CheckpointEvent
    from tritter.protocol.home import Layout
    home = b
    ckpt = home / "runs" / "20260101-000000-bench" / "checkpoints"
    ckpt.mkdir(parents=True)
    sink = Compressor(Layout(home), CompressSettings(keep_last=5, keyframe_every=8, threads=threads))
    for seq, src in enumerate([a, Path(sys.argv[5])], 1):
        step = seq * 100
        dst = ckpt / f"step-{step:08d}.safetensors"
        shutil.copyfile(src, dst)
        sink.handle(CheckpointEvent(seq=seq, run_id="20260101-000000-bench", path=f"checkpoints/{dst.name}", step=step, stage="100m",
                                    bytes=dst.stat().st_size, sha256=file_sha256(dst), reason="periodic"))
    kinds = [codec.read_header(p).get("chain") for p in sorted(ckpt.glob("*.tzst"))]
    assert len(kinds) == 2 and not list(ckpt.glob("*.safetensors")), kinds  # both compressed, raw files removed
    extra["chain"] = kinds  # [0, 1]: a keyframe then a delta; [0, 0]: the delta did not pay
elif op == "import":
    codec.tzst_v2.frames._b2()  # blosc2 (and numexpr) loaded, as in every measured operation
elif op == "import-sink":
    codec.tzst_v2.frames._b2()
    from tritter.clients.ckpt.compressor import Compressor  # the sink's own imports (pyzmq, msgspec, ...)
print(json.dumps({"op": op, "seconds": time.perf_counter() - t0, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **extra}))
"""


def run(op: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", MEASURE, op, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{op} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(work: Path, threads: int, log: Any = print) -> dict[str, Any]:
    """Build the two checkpoints in ``work`` and measure each operation; returns the figures."""
    from tritter.formats import codec  # noqa: PLC0415

    a, b = work / "step-00000001.safetensors", work / "step-00000002.safetensors"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD, str(a), str(b)], check=True)
    log(f"built two 100m checkpoints ({a.stat().st_size / 1e9:.2f} GB each) in {time.perf_counter() - t0:.0f} s")
    src = codec.tzst_v2.RawFileSource(a)
    largest = max(s.end - s.start for s in src.ordered)
    src.close()
    base = run("import", str(a), str(a), "1")
    sink_base = run("import-sink", str(a), str(a), "1")
    rows = [base, sink_base]
    rows.append(run("compress", str(a), str(a) + ".tzst", str(threads)))
    rows.append(run("compress-delta", str(b), str(b) + ".tzst", str(threads), str(a) + ".tzst"))
    rows.append(run("sink", str(a), str(work / "home"), str(threads), str(b)))
    import shutil  # noqa: PLC0415

    shutil.rmtree(work / "home")
    b.unlink()  # the delta must decode from the .tzst files alone
    a.rename(work / "kept.safetensors")
    rows.append(run("decompress", str(b) + ".tzst", str(work / "out.safetensors"), str(threads)))
    rows.append(run("read-tensors", str(b) + ".tzst", "-", str(threads)))
    size = (work / "kept.safetensors").stat().st_size
    # frames in flight: up to 2 per thread, each with its input, base, XOR and output buffers (8 MiB frames)
    limit_kib = (2 * largest + (64 << 20) * (1 + threads)) // 1024 + base["maxrss_kib"]
    for r in rows:
        own = (sink_base if r["op"] == "sink" else base)["maxrss_kib"]
        r["above_import_kib"] = r["maxrss_kib"] - own
        r["within_bound"] = r["above_import_kib"] <= limit_kib - base["maxrss_kib"]
        log(f"  {r['op']:<15} peak RSS {r['maxrss_kib'] / 1024:8.1f} MiB  ({r['seconds']:.1f} s)")
    return {
        "checkpoint_bytes": size,
        "largest_tensor_bytes": largest,
        "import_baseline_kib": base["maxrss_kib"],
        "bound_kib": limit_kib,
        "rows": rows,
        "all_within_bound": all(r["within_bound"] for r in rows if r["op"] not in ("import", "import-sink", "read-tensors")),
        "note": "100m preset shapes; random-init weights, synthetic AdamW moments (not trained)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one under /tmp)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tt-mem-", dir=args.dir or "/tmp") as d:
        result = measure(Path(d), args.threads, (lambda s: None) if args.json else print)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
