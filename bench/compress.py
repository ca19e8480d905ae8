#!/usr/bin/env python
"""Checkpoint compression: tritter's .tzst (full and delta) against ZipNN and zstd, side by side.

Makes real checkpoints by training a preset (``small``; ``--quick``: ``tiny``) through a real
``tritterd`` (in a temporary home) unless ``--ckpt-dir`` points at existing ``step-*.safetensors`` files, then
measures on the newest two consecutive checkpoints with the same tensors (full: the newer one;
delta: against the older; a stage-final checkpoint drops the hybrid state, so it is skipped):

* fp32: the files as written by the trainer (weights, AdamW moments, RNG);
* bf16: the same files with every F32 tensor cast to BF16 (weights *and* optimizer state).

Each round measures every codec back to back on the same bytes, single-threaded and with all
cores, so machine load hits them alike (each the fastest of ``PASSES`` passes); speeds are also reported as ratios to ZipNN measured in
the same round, and every figure as the range over ``--repeat`` rounds.  Also: ratios per tensor
group (weights, ``exp_avg``, ``exp_avg_sq``; full and delta), resume speed (``safetensors``
loading the raw file against tritter reading the ``.tzst`` into tensors), and with ``--memory``
peak RSS on a ``100m``-preset checkpoint (``bench/compress_memory.py``).

tritter's compress timing is given the file's sha256, as the sink has it (the trainer's event
carries it); ``sha256_MBps`` says what computing it costs.  Decompress checks every segment's
xxh3.  ZipNN is used when ``import zipnn`` works (``pip install --no-deps zipnn`` into the venv:
it is not a project dependency); without it its columns are skipped with a note.

    .venv/bin/python bench/compress.py --quick        # 20 steps, 2 rounds
    .venv/bin/python bench/compress.py --memory       # 75 steps, 3 rounds, + the 100m memory test

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
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
from tritter.formats.checkpoints import checkpoint_step
from tritter.formats.tzst_v2 import RawFileSource

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def make_checkpoints(home: Path, preset: str, steps: int, every: int, log: Callable[[str], None]) -> list[Path]:
    """Train ``preset`` through a real tritterd; returns its checkpoint files."""
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
            [tool("tritterctl"), "--home", str(home), "start", "--start", preset, "--end", preset, "--steps", str(steps), "--checkpoint-every", str(every)],
            capture_output=True, text=True, check=True,
        )
        run_id = out.stdout.strip().split()[-1]
        log(f"training {preset} for {steps} steps (run {run_id}, checkpoint every {every}) ...")
        subprocess.run([tool("tritterctl"), "--home", str(home), "wait", run_id, "--timeout", "1800"], check=True, capture_output=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        stderr.close()
    return sorted((home / "runs" / run_id / "checkpoints").glob("step-*.safetensors"))


def same_tensors_pair(files: list[Path]) -> tuple[list[Path], bool]:
    """(the newest two consecutive checkpoints holding the same tensor names, True), or (the last
    two, False) when no pair matches.  A stage-final checkpoint drops the hybrid schedule's extra
    state, so against the periodic one before it a delta would only show what was dropped.
    Reads the headers only."""
    def names(path: Path) -> set[str]:
        src = RawFileSource(path)
        try:
            return set(src.spans)
        finally:
            src.close()

    held = [names(p) for p in files]
    for i in range(len(files) - 1, 0, -1):
        if held[i] == held[i - 1]:
            return [files[i - 1], files[i]], True
    return files[-2:], False


def _opt(value: Any, fmt: str) -> str:
    """``fmt`` of value, or "-" where there is none (ZipNN not installed)."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return fmt.format(value)


def to_bf16(data: bytes) -> bytes:
    import torch
    from safetensors.torch import load, save

    tensors = load(data)
    meta = codec.safetensors_metadata(data)
    cast = {k: (v.to(torch.bfloat16) if v.dtype == torch.float32 else v) for k, v in tensors.items()}
    return save(cast, metadata=meta)


def group_of(name: str) -> str:
    """weights | exp_avg | exp_avg_sq | other, from a tritter checkpoint tensor name."""
    if name.endswith(".exp_avg_sq"):
        return "exp_avg_sq"
    if name.endswith(".exp_avg"):
        return "exp_avg"
    return "weights" if name.startswith("model.") else "other"


def split_groups(data: bytes) -> dict[str, bytes]:
    """One safetensors file per group of ``data``'s float tensors (bytes unchanged)."""
    from safetensors.torch import load, save

    out: dict[str, dict[str, Any]] = {}
    for k, v in load(data).items():
        if v.is_floating_point():
            out.setdefault(group_of(k), {})[k] = v
    order = ("weights", "exp_avg", "exp_avg_sq")  # the same row order for every dtype
    return {g: save(out[g]) for g in order if g in out}


def zipnn_codec(dtype: str, threads: int) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    try:
        import zipnn  # noqa: PLC0415
    except ImportError:
        return None
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype="float32" if dtype == "fp32" else "bfloat16", threads=threads)
    # zipnn reorders the bits of its input buffer in place, so it gets a fresh copy each time
    # (made by measure_once outside the timing); its output is taken as it comes (a bytearray).
    return z.compress, z.decompress


def codecs(dtype: str, threads: int, sha: str, base: bytes | None) -> dict[str, tuple[Callable[[bytes], Any], Callable[[Any], Any]]]:
    zc = zstandard.ZstdCompressor(level=3, threads=threads if threads > 1 else 0)
    out: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], Any]]] = {
        "zstd-3": (zc.compress, zstandard.ZstdDecompressor().decompress),
    }
    z = zipnn_codec(dtype, threads)
    if z is not None:
        out["zipnn"] = z
    # tritter is given the sha256s it would have in use (the sink gets the file's from the
    # checkpoint event, a delta base's from its own index), as ZipNN computes none.
    out["tritter"] = (
        lambda d: codec.compress_bytes(d, threads=threads, sha256=sha),
        lambda c: codec.decompress_bytes(c, threads=threads),
    )
    out["tritter-max"] = (  # --max-ratio: exponent coding allowed (smaller, slower)
        lambda d: codec.compress_bytes(d, threads=threads, sha256=sha, max_ratio=True),
        lambda c: codec.decompress_bytes(c, threads=threads),
    )
    if base is not None:
        base_sha = hashlib.sha256(base).hexdigest()
        out["tritter-delta"] = (
            lambda d: codec.compress_bytes(d, base=base, base_name="prev.safetensors", base_sha256=base_sha, threads=threads, sha256=sha),
            lambda c: codec.decompress_bytes(c, base, threads=threads, base_sha256=base_sha),
        )
    return out


PASSES = 3  # timed passes per codec per round; the fastest counts (as timeit does: slower ones measured the machine)


def measure_once(comp: Callable[[Any], Any], decomp: Callable[[Any], Any], data: bytes, copy_input: bool = False) -> dict[str, Any]:
    """Ratio and MB/s of one codec on ``data``, best of ``PASSES``: wall clock, and CPU seconds of this process.

    ``*_cpu_MBps`` (bytes / CPU seconds, all threads) is what a codec would do on a quiet core:
    on a shared, overloaded machine the wall clock mostly measures the other processes, while
    CPU time charges each codec only its own work.  Single-threaded, it is the fair comparison.
    ``copy_input``: hand ``comp`` a fresh ``bytearray`` each pass, copied outside the timing
    (for a codec that scrambles its input in place).
    """
    best = {"cw": 1e9, "cc": 1e9, "dw": 1e9, "dc": 1e9}
    packed: Any = None
    restored: Any = None
    for _ in range(PASSES):
        arg = bytearray(data) if copy_input else data
        c0, t0 = time.process_time(), time.perf_counter()
        packed = comp(arg)
        c1, t1 = time.process_time(), time.perf_counter()
        restored = decomp(packed)
        c2, t2 = time.process_time(), time.perf_counter()
        for key, v in (("cw", t1 - t0), ("cc", c1 - c0), ("dw", t2 - t1), ("dc", c2 - c1)):
            best[key] = min(best[key], v)
    mb = len(data) / 1e6
    return {"ratio": len(data) / len(packed), "compress_MBps": mb / best["cw"], "decompress_MBps": mb / best["dw"],
            "compress_cpu_MBps": mb / max(best["cc"], 1e-6), "decompress_cpu_MBps": mb / max(best["dc"], 1e-6),
            "bit_exact": bytes(restored) == data, "compressed": len(packed)}


def resume_speeds(raw: bytes, prev: bytes, work: Path) -> dict[str, float]:
    """MB/s of resuming from the checkpoint: safetensors (raw file) vs tritter (.tzst, full and delta).

    A resume ends with the bytes in the model's and optimizer's tensors, so each timing loads
    the file and copies every tensor into preallocated ones (what ``load_state_dict`` does).
    Without the copy, ``safetensors.torch.load_file`` of a cached file only maps it (~20 GB/s
    here) and the reading happens later, inside ``load_state_dict``.
    """
    import torch
    from safetensors.torch import load_file

    from tritter.daemon.engine.checkpoint import _TORCH_DTYPE

    a, b = work / "step-00000001.safetensors", work / "step-00000002.safetensors"
    a.write_bytes(prev)
    b.write_bytes(raw)
    codec.compress_file(a)
    full = work / "full" / b.name
    full.parent.mkdir()
    codec.compress_file(b, full.with_name(b.name + ".tzst"))
    codec.compress_file(b, base=work / (a.name + ".tzst"))
    a.unlink()
    targets = {k: torch.empty_like(v) for k, v in load_file(str(b)).items()}

    def into_targets(tensors: dict[str, Any]) -> None:
        for k, t in tensors.items():
            targets[k].copy_(t)

    def tzst(path: Path) -> None:
        _, arrays = codec.read_tensors(path)
        into_targets({k: torch.from_numpy(x).view(_TORCH_DTYPE[d]).reshape(s) for k, (d, s, x) in arrays.items()})

    out: dict[str, float] = {}
    mb = len(raw) / 1e6
    files = [b, full.with_name(b.name + ".tzst"), work / (b.name + ".tzst"), work / (a.name + ".tzst")]
    for name, fn in (("safetensors", lambda: into_targets(load_file(str(b)))), ("tritter_full", lambda: tzst(full.with_name(b.name + ".tzst"))),
                     ("tritter_delta", lambda: tzst(work / (b.name + ".tzst")))):
        fn()  # warm the page cache and imports
        best = min(_timed(fn) for _ in range(3))
        out[f"{name}_MBps"] = mb / best
        cold = []
        for _ in range(3):
            drop_page_cache(files)
            cold.append(_timed(fn))
        out[f"{name}_cold_MBps"] = mb / min(cold)
    return out


def drop_page_cache(paths: list[Path]) -> None:
    """Evict ``paths`` from the page cache (fsync, then ``posix_fadvise(DONTNEED)``): the next read
    comes from the disk, as on a resume after a reboot or on a busy host.  Needs no root, unlike
    ``/proc/sys/vm/drop_caches``; clean pages of these files only."""
    for path in paths:
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def span(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, 30 steps, checkpoints 10 apart, 2 rounds")
    parser.add_argument("--preset", help="preset trained for the checkpoints (default small, as in issue 17's measurement; "
                        "--quick: tiny, whose few-KB tensors are the worst case for per-frame overhead)")
    parser.add_argument("--steps", type=int, help="training steps (default 75; --quick 30)")
    parser.add_argument("--every", type=int, help="steps between checkpoints (default 25; --quick 10)")
    parser.add_argument("--repeat", type=int, help="measurement rounds, reported as ranges (default 3; --quick 2)")
    parser.add_argument("--threads", type=int, help="'all cores' thread count (default: os.cpu_count())")
    parser.add_argument("--ckpt-dir", type=Path, help="use the step-*.safetensors files here instead of training")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on a 100m-preset checkpoint (~1.2 GB; minutes)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    preset = args.preset or ("tiny" if args.quick else "small")
    steps = args.steps or (30 if args.quick else 75)
    every = args.every or (10 if args.quick else 25)
    repeat = args.repeat or (2 if args.quick else 3)
    all_cores = args.threads or os.cpu_count() or 1

    def log(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="tt-bench-", dir="/tmp"))
    try:
        if args.ckpt_dir:
            files = sorted(args.ckpt_dir.glob("step-*.safetensors"))
        else:
            files = make_checkpoints(tmp / "home", preset, steps, every, log)
        if len(files) < 2:
            raise SystemExit(f"need at least two checkpoints, found {len(files)}")
        files, matched = same_tensors_pair(files)
        if not matched:
            log(f"note: {files[0].name} and {files[1].name} hold different tensors (no two checkpoints match): the delta covers only the shared ones")
        prev, last = files[-2].read_bytes(), files[-1].read_bytes()
        variants = {"fp32": (prev, last), "bf16": (to_bf16(prev), to_bf16(last))}
        have_zipnn = zipnn_codec("fp32", 1) is not None
        if not have_zipnn:
            log("note: zipnn is not installed (.venv/bin/pip install --no-deps zipnn): its columns are skipped")
        bytes(codec.compress_bytes(last[:0] or last, threads=1))  # import blosc2 once, outside the timings

        # -- speed and ratio, side by side, `repeat` rounds ------------------------------------------
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        sha_speed: list[float] = []
        for rnd in range(repeat):
            for dtype, (p, cur) in variants.items():
                t0 = time.perf_counter()
                sha = hashlib.sha256(cur).hexdigest()
                sha_speed.append(len(cur) / 1e6 / (time.perf_counter() - t0))
                for threads in sorted({1, all_cores}):
                    for name, (c, d) in codecs(dtype, threads, sha, p).items():
                        r = measure_once(c, d, cur, copy_input=name == "zipnn")
                        runs.setdefault((dtype, name, threads), []).append(r)
            log(f"round {rnd + 1}/{repeat} done")
        results = []
        for (dtype, name, threads), rs in runs.items():
            row: dict[str, Any] = {"dtype": dtype, "codec": name, "threads": threads, "all_cores": threads > 1, "ratio": round(rs[0]["ratio"], 4),
                                   "compress_MBps": span([r["compress_MBps"] for r in rs]),
                                   "decompress_MBps": span([r["decompress_MBps"] for r in rs]),
                                   "compress_cpu_MBps": span([r["compress_cpu_MBps"] for r in rs]),
                                   "decompress_cpu_MBps": span([r["decompress_cpu_MBps"] for r in rs]),
                                   "bit_exact": all(r["bit_exact"] for r in rs)}
            z = runs.get((dtype, "zipnn", threads))
            if z is not None:  # speed relative to ZipNN in the same round
                row["ratio_vs_zipnn"] = round(rs[0]["ratio"] / z[0]["ratio"], 4)
                row["compress_vs_zipnn"] = span([r["compress_MBps"] / q["compress_MBps"] for r, q in zip(rs, z)])
                row["decompress_vs_zipnn"] = span([r["decompress_MBps"] / q["decompress_MBps"] for r, q in zip(rs, z)])
                row["compress_cpu_vs_zipnn"] = span([r["compress_cpu_MBps"] / q["compress_cpu_MBps"] for r, q in zip(rs, z)])
                row["decompress_cpu_vs_zipnn"] = span([r["decompress_cpu_MBps"] / q["decompress_cpu_MBps"] for r, q in zip(rs, z)])
            zs = runs[(dtype, "zstd-3", threads)]
            row["ratio_vs_zstd3"] = round(rs[0]["ratio"] / zs[0]["ratio"], 4)
            results.append(row)

        # -- ratios per tensor group -------------------------------------------------------------
        groups = []
        for dtype, (p, cur) in variants.items():
            pg, cg = split_groups(p), split_groups(cur)
            for g, data in cg.items():
                row = {"dtype": dtype, "group": g, "bytes": len(data),
                       "tritter_full": round(len(data) / len(bytes(codec.compress_bytes(data))), 4),
                       "tritter_delta": round(len(data) / len(bytes(codec.compress_bytes(data, base=pg[g]))), 4),
                       "tritter_max_full": round(len(data) / len(bytes(codec.compress_bytes(data, max_ratio=True))), 4),
                       "tritter_max_delta": round(len(data) / len(bytes(codec.compress_bytes(data, base=pg[g], max_ratio=True))), 4),
                       "zstd3": round(len(data) / len(zstandard.ZstdCompressor(level=3).compress(data)), 4)}
                z = zipnn_codec(dtype, all_cores)
                if z is not None:
                    row["zipnn"] = round(len(data) / len(z[0](data)), 4)
                groups.append(row)

        # -- resume ---------------------------------------------------------------------------------
        resume_runs = [resume_speeds(last, prev, Path(tempfile.mkdtemp(dir=tmp))) for _ in range(repeat)]
        resume = {k: span([r[k] for r in resume_runs]) for k in resume_runs[0]}
        resume["tritter_full_vs_safetensors"] = span([r["tritter_full_MBps"] / r["safetensors_MBps"] for r in resume_runs])
        resume["tritter_delta_vs_safetensors"] = span([r["tritter_delta_MBps"] / r["safetensors_MBps"] for r in resume_runs])
        resume["tritter_full_cold_vs_safetensors_cold"] = span([r["tritter_full_cold_MBps"] / r["safetensors_cold_MBps"] for r in resume_runs])
        resume["tritter_delta_cold_vs_safetensors_cold"] = span([r["tritter_delta_cold_MBps"] / r["safetensors_cold_MBps"] for r in resume_runs])

        memory = None
        if args.memory:
            import compress_memory  # noqa: PLC0415  (bench/ is on sys.path when run as a script)

            log("memory: 100m-preset checkpoint ...")
            memory = compress_memory.measure(Path(tempfile.mkdtemp(dir=tmp)), 1, log)

        log("")
        log(f"checkpoints: {files[-2].name} -> {files[-1].name} ({len(last) / 1e6:.1f} MB fp32); {repeat} rounds, ranges min-max;"
            f" 'all cores' = {all_cores} threads; sha256 alone {min(sha_speed):.0f}-{max(sha_speed):.0f} MB/s")
        log(f"{'dtype':<5} {'codec':<14} {'thr':>3} {'ratio':>7} {'vs zipnn':>8} {'comp MB/s':>13} {'vs zipnn':>11} {'decomp MB/s':>13} {'vs zipnn':>11} exact")
        for r in results:
            def rng(v: list[float], fmt: str = "{:.0f}") -> str:
                return f"{fmt.format(v[0])}-{fmt.format(v[1])}"
            log(f"{r['dtype']:<5} {r['codec']:<14} {r['threads']:>3} {r['ratio']:>6.3f}x {_opt(r.get('ratio_vs_zipnn'), '{:.3f}'):>8}"
                f" {rng(r['compress_MBps']):>13} {rng(r['compress_vs_zipnn'], '{:.2f}') if 'compress_vs_zipnn' in r else '-':>11}"
                f" {rng(r['decompress_MBps']):>13} {rng(r['decompress_vs_zipnn'], '{:.2f}') if 'decompress_vs_zipnn' in r else '-':>11} {r['bit_exact']}")
        log("")
        log("same rounds, MB per CPU second of this process (the fair single-thread comparison on a loaded machine):")
        log(f"{'dtype':<5} {'codec':<14} {'thr':>3} {'comp cpu MB/s':>14} {'vs zipnn':>11} {'decomp cpu MB/s':>16} {'vs zipnn':>11}")
        for r in results:
            log(f"{r['dtype']:<5} {r['codec']:<14} {r['threads']:>3} {rng(r['compress_cpu_MBps']):>14}"
                f" {rng(r['compress_cpu_vs_zipnn'], '{:.2f}') if 'compress_cpu_vs_zipnn' in r else '-':>11}"
                f" {rng(r['decompress_cpu_MBps']):>16} {rng(r['decompress_cpu_vs_zipnn'], '{:.2f}') if 'decompress_cpu_vs_zipnn' in r else '-':>11}")
        log("")
        log(f"{'dtype':<5} {'group':<11} {'MB':>6} {'tritter full':>12} {'delta':>7} {'max full':>9} {'delta':>7} {'zipnn':>7} {'zstd-3':>7}")
        for g in groups:
            log(f"{g['dtype']:<5} {g['group']:<11} {g['bytes'] / 1e6:>6.1f} {g['tritter_full']:>11.3f}x {g['tritter_delta']:>6.3f}x"
                f" {g['tritter_max_full']:>8.3f}x {g['tritter_max_delta']:>6.3f}x {_opt(g.get('zipnn'), '{:.3f}x'):>7} {g['zstd3']:>6.3f}x")
        log("")
        log("resume (load into torch tensors; *_cold: files evicted from the page cache first): " + ", ".join(f"{k} {v[0]:.2f}-{v[1]:.2f}" for k, v in resume.items()))
        summary = {
            "bench": "compress",
            "quick": args.quick,
            "preset": None if args.ckpt_dir else preset,
            "checkpoints": [files[-2].name, files[-1].name],
            "steps_apart": (checkpoint_step(files[-1]) or 0) - (checkpoint_step(files[-2]) or 0),
            "fp32_bytes": len(last),
            "repeat": repeat,
            "cpu_count": os.cpu_count(),
            "all_cores_threads": all_cores,
            "zipnn": have_zipnn,
            "sha256_MBps": span(sha_speed),
            "results": results,
            "groups": groups,
            "resume": resume,
            "memory": memory,
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
