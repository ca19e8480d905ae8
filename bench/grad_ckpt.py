#!/usr/bin/env python
"""Gradient checkpointing: peak memory and step time for ``grad_ckpt_every`` N in {0, 1, 4}.

``model.set_grad_checkpointing(N)`` recomputes blocks 0, N, 2N, ... in backward (0 = off).  Each N
runs in its own fresh subprocess (same seed, same weights, same random token batch), one after
another, so peaks and timings never mix.  In each child:

* one warm-up step (allocates gradients and the AdamW moments, as in training);
* one measured forward+backward with the gradients already allocated (zeroed), so weights,
  gradients and AdamW state are the baseline and the peak is what N changes:
  - CPU: the allocator's peak above the pre-step baseline, from ``torch.profiler``'s memory
    records (every CPU allocation/free with its size and timestamp, replayed in order), and as a
    cross-check the process RSS high-water mark (``getrusage`` maxrss, malloc forced to return
    big blocks to the OS with ``MALLOC_MMAP_THRESHOLD_``) minus the RSS before the step;
  - CUDA (``--cuda``): ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before it;
* ``--steps`` timed full optimizer steps (forward, backward, clip, AdamW): median wall time.

The peak is activations saved for backward, the logits/loss buffers, the recompute of a
checkpointed block and backward temporaries.  Ratios are vs N=0.

    .venv/bin/python bench/grad_ckpt.py --quick            # small (batch 8 x 128) + 100m (batch 1 x 128), CPU
    .venv/bin/python bench/grad_ckpt.py                    # small (8 x 128) + 100m (2 x 256)
    .venv/bin/python bench/grad_ckpt.py --preset 100m --batch 32 --seq 1024 --cuda --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

EVERY = (0, 1, 4)


def log(msg: str) -> None:
    print(f"[grad_ckpt] {msg}", file=sys.stderr, flush=True)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _profiled_peak(prof) -> int | None:
    """Peak of live CPU bytes (relative to the start) from the profiler's raw memory records."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    records = sorted(
        (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and "cpu" in str(e.device_type()).lower()
    )
    if not records:
        return None
    live = peak = 0
    for _, nbytes in records:  # nbytes < 0 for a free
        live += nbytes
        peak = max(peak, live)
    return peak


def child(args: argparse.Namespace) -> None:
    import torch

    from tritter.daemon.engine.device import autocast
    from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
    from tritter.daemon.engine.seeding import stage_generator
    from tritter.daemon.engine.trainer import make_optimizer
    from tritter.recipe.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda else "cpu")
    preset = get_preset(args.preset)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, stage_generator(args.seed, 0))
    model.to(device)
    model.set_grad_checkpointing(args.every)
    model.train()
    # The trainer's AdamW (decay on matrices only), fused on CUDA as the trainer makes it.
    opt = make_optimizer(model, preset, fused=device.type == "cuda")
    if args.hybrid:  # the hybrid predictor's state lives beside the weights in real runs
        from tritter.daemon.engine.hybrid import HybridController

        hybrid = HybridController(model, opt)  # noqa: F841 - kept alive for the memory figures
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, preset.shape.vocab_size, (args.batch, args.seq + 1), generator=gen).to(device)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        with autocast(device):  # bf16 on CUDA, as the trainer runs; fp32 on CPU
            loss = model(x, labels=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step()]  # warm-up: allocates grads + AdamW state
    out: dict[str, Any] = {"every": args.every}

    # Measured forward + backward. Gradients stay allocated (zeroed) so the baseline holds weights,
    # gradients and AdamW state and the peak is what N changes: activations, logits, recompute.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if device.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with autocast(device):
            loss = model(x, labels=y)
        loss.backward()
        sync()
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        out["baseline_bytes"] = base
        out["method"] = "torch.cuda.max_memory_allocated - memory_allocated before the step"
    else:
        from torch.profiler import ProfilerActivity, profile

        base_rss = _rss_bytes()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
            loss = model(x, labels=y)
            loss.backward()
        out["peak_bytes"] = _profiled_peak(prof)
        out["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
        out["baseline_rss_bytes"] = base_rss
        out["method"] = "torch.profiler CPU memory records (peak live bytes above pre-step); rss = maxrss - rss before"
    opt.zero_grad(set_to_none=True)

    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    out["step_s"] = statistics.median(times)
    out["step_times_s"] = times
    out["losses"] = losses
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out), flush=True)


def run_case(args: argparse.Namespace, preset: str, batch: int, seq: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # big blocks go back to the OS on free: honest RSS
    rows = []
    for every in EVERY:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--preset", preset, "--every", str(every),
               "--batch", str(batch), "--seq", str(seq), "--steps", str(args.steps), "--seed", str(args.seed)]
        if args.cuda:
            cmd.append("--cuda")
        if args.hybrid:
            cmd.append("--hybrid")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"child failed: {' '.join(cmd)}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        log(f"{preset} b{batch}x{seq} N={every}: peak {fmt(row['peak_bytes'])}"
            + (f" (rss {fmt(row['rss_peak_bytes'])})" if "rss_peak_bytes" in row else "")
            + f", step {row['step_s']:.2f} s  [{time.perf_counter() - t0:.0f} s]")
    ref = rows[0]
    for row in rows:
        row["peak_ratio"] = ratio(row["peak_bytes"], ref["peak_bytes"])
        if "rss_peak_bytes" in row:
            row["rss_peak_ratio"] = ratio(row["rss_peak_bytes"], ref["rss_peak_bytes"])
        row["step_time_ratio"] = row["step_s"] / ref["step_s"]
        row["losses_match_n0"] = all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(row["losses"], ref["losses"]))
    return {"preset": preset, "batch": batch, "seq": seq, "rows": rows}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fmt(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small (8x128) + 100m (1x128), 2 timed steps")
    ap.add_argument("--preset", default=None, help="one preset only (default: small and 100m)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: per case)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: per case)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per N (default 5, quick 2)")
    ap.add_argument("--cuda", action="store_true", help="run on CUDA as the trainer does: bf16 autocast, fused AdamW, hybrid state (torch.cuda.max_memory_allocated)")
    ap.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=None, help="allocate the hybrid predictor's state (default: with --cuda)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print only the final JSON line")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--every", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hybrid is None:
        args.hybrid = args.cuda  # measure what a real --cuda run holds

    if args.child:
        args.batch = args.batch or 1
        args.seq = args.seq or 128
        child(args)
        return
    if args.cuda:
        import torch

        if not torch.cuda.is_available():
            ap.error("--cuda: CUDA is not available")
    if args.steps is None:
        args.steps = 2 if args.quick else 5
    if args.preset:
        from tritter.recipe.presets import get_preset

        t = get_preset(args.preset).train
        cases = [(args.preset, args.batch or (t.batch_size if args.cuda else min(t.batch_size, 2)), args.seq or (t.seq_len if args.cuda else min(t.seq_len, 256)))]
    elif args.cuda:
        cases = [("small", 8, 128), ("100m", args.batch or 32, args.seq or 1024)]
    elif args.quick:
        cases = [("small", 8, 128), ("100m", args.batch or 1, args.seq or 128)]
    else:
        cases = [("small", 8, 128), ("100m", args.batch or 2, args.seq or 256)]

    t0 = time.perf_counter()
    results = [run_case(args, *case) for case in cases]
    if not args.json:
        print(f"\n{'preset':<7} {'batch x seq':>11} {'N':>2} {'peak':>11} {'x N=0':>6} {'rss peak':>11} {'x N=0':>6} {'step s':>7} {'x N=0':>6}")
        for res in results:
            for r in res["rows"]:
                pr, rr = r["peak_ratio"], r.get("rss_peak_ratio")
                pr_s = "" if pr is None else f"{pr:.2f}"
                rr_s = "" if rr is None else f"{rr:.2f}"
                print(f"{res['preset']:<7} {res['batch']:>5} x {res['seq']:<4} {r['every']:>2} {fmt(r['peak_bytes']):>11} "
                      f"{pr_s:>6} {fmt(r.get('rss_peak_bytes')):>11} {rr_s:>6} {r['step_s']:>7.2f} {r['step_time_ratio']:>6.2f}")
    summary = {
        "bench": "grad_ckpt",
        "device": "cuda" if args.cuda else "cpu",
        "every": list(EVERY),
        "cases": [
            {
                "preset": res["preset"], "batch": res["batch"], "seq": res["seq"],
                **{f"n{r['every']}": {
                    "peak_mib": None if r["peak_bytes"] is None else round(r["peak_bytes"] / 2**20, 2),
                    "peak_ratio": None if r["peak_ratio"] is None else round(r["peak_ratio"], 3),
                    **({"rss_peak_mib": round(r["rss_peak_bytes"] / 2**20, 2),
                        "rss_peak_ratio": None if r.get("rss_peak_ratio") is None else round(r["rss_peak_ratio"], 3)}
                       if "rss_peak_bytes" in r else {}),
                    "step_s": round(r["step_s"], 3),
                    "step_time_ratio": round(r["step_time_ratio"], 3),
                    "losses_match_n0": r["losses_match_n0"],
                } for r in res["rows"]},
            }
            for res in results
        ],
        "steps": args.steps,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
