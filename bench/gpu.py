#!/usr/bin/env python
"""GPU acceptance bench: tokens/s, MFU, peak memory vs the planner, a falling loss, and a growth jump.

One command on one H100/H200 (under 8 minutes)::

    .venv/bin/python bench/gpu.py --json                 # 100m and 1b, growth 100m -> 500m
    .venv/bin/python bench/gpu.py --device cpu --preset tiny --quick --json   # the same code on CPU (CI)

For each preset it trains the way the trainer does (``daemon/engine``): the real model and init,
the embedded corpus through ``Batches``, gradient accumulation (``accumulation.forward_backward``:
bf16 autocast on CUDA), the preset's gradient checkpointing, grad clipping, AdamW (fused on CUDA),
the hybrid controller's bookkeeping on every (true) step — so its fp16 history is in memory — and
``torch.compile`` when the trainer would use it (``device.compile_wanted``).  The micro-batch is
the planner's fit for an 80 GB card (``recipe/planner.py``; ``--micro-batch`` overrides), with
``--accum`` micro-batches per optimizer step and a constant peak LR (no warmup, so the loss moves
within a few steps).  After ``--warmup`` untimed steps (compilation, allocation), it times
``--steps`` optimizer steps with ``torch.cuda.synchronize`` around each and reports:

* ``tokens_per_s`` (global batch tokens / wall time) and ``mfu`` = tokens/s x model FLOPs per token
  (``planner.flops_per_token``: 6N + 12 L h d T, PaLM appendix B) / the GPU's dense bf16 peak
  (989 TFLOP/s for H100/H200 SXM; ``--peak-tflops`` for others).  Target: MFU >= 0.40 at 1b.
* ``peak_bytes`` = ``torch.cuda.max_memory_allocated`` over the timed steps (stats reset after
  the warm-up), ``predicted_peak_bytes`` (the planner, same micro-batch, compiled or eager as the
  step ran) and their ratio; target within 15%.  ``predicted_eager_peak_bytes``: the planner's
  eager figure, which the trainer's micro-batch probe sizes for.  On CPU there is no allocator
  peak to read: ``peak_bytes`` is null (the planner's
  activation bytes are checked exactly on CPU by tests/test_planner.py).
* ``loss_finite`` and ``loss_falling`` (mean of the last half of the steps below the first half).
* ``growth``: held-out loss of the first preset's trained model before and after growing it into
  ``--growth-to`` (function-preserving growth: the jump should be ~0).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tritter.daemon.engine import accumulation
from tritter.daemon.engine.data import Batches, heldout_batches, load_token_data
from tritter.daemon.engine.device import compile_for_training, compile_wanted, is_compiled
from tritter.daemon.engine.growth import grow
from tritter.daemon.engine.hybrid import HybridController
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.daemon.engine.trainer import evaluate, make_optimizer
from tritter.recipe.planner import H100_BF16_DENSE_FLOPS, gpu_peak_flops, model_flops_utilization, plan_run
from tritter.recipe.presets import get_preset

def log(message: str) -> None:
    print(f"[gpu-bench] {message}", file=sys.stderr, flush=True)


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float, str]:
    """(dense bf16 FLOP/s of the device, its name); H100's figure when unknown or on CPU."""
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type != "cuda":
        return H100_BF16_DENSE_FLOPS, "cpu (MFU relative to an H100)"
    name = torch.cuda.get_device_name(device)
    flops = gpu_peak_flops(name)
    return (flops, name) if flops else (H100_BF16_DENSE_FLOPS, f"{name} (unknown: H100 peak assumed)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, device: torch.device, seed: int) -> LlamaForCausalLM:
    """The preset's model with the trainer's seeded init, on ``device``."""
    model = LlamaForCausalLM(get_preset(name).shape)
    init_weights(model, torch.Generator().manual_seed(seed))
    return model.to(device)


def train_preset(
    name: str, model: LlamaForCausalLM, data: Any, device: torch.device, args: argparse.Namespace, flops: float
) -> dict[str, Any]:
    """Train ``model`` for warmup + steps optimizer steps as the trainer would; return the figures."""
    preset = get_preset(name)
    cuda = device.type == "cuda"
    plan = plan_run(name, name, cuda=cuda, micro_batch=args.micro_batch, hybrid=True)[0]
    micro, seq = plan.micro_batch, preset.train.seq_len
    # The planner's peak for exactly this micro-batch (the accumulation count does not change it).
    model.set_grad_checkpointing(plan.grad_ckpt_every)
    model.train()
    optimizer = make_optimizer(model, preset, fused=cuda)
    lr = preset.train.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    controller = HybridController(model, optimizer)
    train_model = compile_for_training(model, device, args.compile)
    batches = Batches(data.train, micro * args.accum, seq, args.seed)
    total = args.warmup + args.steps
    losses: list[float] = []
    times: list[float] = []
    log(f"{name}: micro-batch {micro} x {seq}, accum {args.accum}, grad ckpt every {plan.grad_ckpt_every}, "
        f"compiled {is_compiled(train_model)}, {total} steps")
    for step in range(total):
        if step == args.warmup and cuda:
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        started = time.perf_counter()
        step_plan = controller.before_step(step, total)  # inside the "warmup" phase: every step true
        x, y = batches.next()
        local = accumulation.forward_backward(train_model, accumulation.split(x, y, micro), device)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), preset.train.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(local)
        controller.after_step(step_plan, loss if math.isfinite(loss) else 0.0, lr, norm)
        sync(device)
        elapsed = time.perf_counter() - started
        losses.append(loss)
        if step >= args.warmup:
            times.append(elapsed)
        log(f"{name} step {step + 1}/{total}: loss {loss:.4f}, {elapsed * 1000:.0f} ms")
    tokens_per_step = micro * args.accum * seq
    tokens_per_s = tokens_per_step * len(times) / sum(times)
    # The planner's peak for the graph that actually ran (compiled, or eager after a fallback).
    plan = plan_run(name, name, cuda=cuda, micro_batch=micro, hybrid=True, compiled=is_compiled(train_model))[0]
    half = len(losses) // 2
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {
        "params": plan.params,
        "micro_batch": micro,
        "accum": args.accum,
        "seq_len": seq,
        "tokens_per_step": tokens_per_step,
        "grad_ckpt_every": plan.grad_ckpt_every,
        "compiled": is_compiled(train_model),
        "step_s_median": statistics.median(times),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": plan.flops_per_token,
        "mfu": model_flops_utilization(tokens_per_s, plan.flops_per_token, flops),
        "peak_bytes": peak,
        "predicted_peak_bytes": plan.peak_bytes,
        "peak_vs_predicted": peak / plan.peak_bytes if peak else None,
        "predicted_eager_peak_bytes": plan.eager_peak_bytes,
        "losses": losses,
        "loss_finite": all(math.isfinite(v) for v in losses),
        "loss_falling": statistics.fmean(losses[half:]) < statistics.fmean(losses[:half]),
    }


def growth_jump(model: LlamaForCausalLM, target: str, heldout: list, device: torch.device, seed: int) -> dict[str, Any]:
    """Held-out loss before and after growing ``model`` into preset ``target`` (relative jump)."""
    before = evaluate(model, heldout, device)
    grown = grow(model.cpu(), get_preset(target).shape, torch.Generator().manual_seed(seed + 1)).to(device)
    after = evaluate(grown, heldout, device)
    del grown
    return {"to": target, "eval_loss_before": before, "eval_loss_after": after, "jump": after / before - 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", action="append", help="preset(s) to measure (default 100m and 1b; tiny with --quick)")
    parser.add_argument("--growth-to", help="grow the first preset's trained model into this one (default 500m; small with --quick; none: skip)")
    parser.add_argument("--quick", action="store_true", help="CI size: 1 warm-up + 4 timed steps, micro-batch 4, accum 2")
    parser.add_argument("--steps", type=int, help="timed optimizer steps (default 8; 4 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; 1 with --quick)")
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step (default 2)")
    parser.add_argument("--micro-batch", type=int, help="sequences per micro-batch (default: the planner's fit; 4 with --quick)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile (default: as the trainer)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak in TFLOP/s, if not an H100/H200/A100/L40S")
    parser.add_argument("--cache-dir", type=Path, help="token cache (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: error: no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    presets = args.preset or (["tiny"] if args.quick else ["100m", "1b"])
    growth_to = args.growth_to or ("small" if args.quick else "500m")
    growth_to = None if growth_to == "none" else growth_to
    args.steps = args.steps or (4 if args.quick else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.quick and args.micro_batch is None:
        args.micro_batch = 4
    if args.device == "cpu" and args.micro_batch is None:
        args.micro_batch = get_preset(presets[0]).train.batch_size
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    flops, device_name = peak_flops(device, args.peak_tflops)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tritter-gpu-bench-") as tmp:
        data = load_token_data(args.cache_dir or Path(tmp), None)
        heldout = heldout_batches(data, 8, get_preset(presets[0]).train.seq_len, 4)
        results: dict[str, Any] = {}
        growth: dict[str, Any] | None = None
        for index, name in enumerate(presets):
            model = build(name, device, args.seed)
            results[name] = train_preset(name, model, data, device, args, flops)
            log(f"{name} done: {json.dumps(results[name])}")  # kept in the log if a later preset fails
            if index == 0 and growth_to:
                growth = {"from": name, **growth_jump(model, growth_to, heldout, device, args.seed)}
                log(f"growth done: {json.dumps(growth)}")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report = {
        "bench": "gpu",
        "device": device_name,
        "peak_flops": flops,
        "compile": compile_wanted(device, args.compile),
        "presets": results,
        "growth": growth,
        "targets": {"mfu_1b": 0.40, "peak_vs_predicted": [0.85, 1.15]},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if not args.json:
        for name, r in results.items():
            peak = f"{r['peak_bytes'] / 2**30:.1f} GiB" if r["peak_bytes"] else "n/a"
            print(f"{name}: {r['tokens_per_s']:.0f} tok/s, MFU {r['mfu']:.3f}, peak {peak} "
                  f"(planner {r['predicted_peak_bytes'] / 2**30:.1f} GiB), loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}")
        if growth:
            print(f"growth {growth['from']} -> {growth['to']}: eval loss {growth['eval_loss_before']:.4f} -> "
                  f"{growth['eval_loss_after']:.4f} ({growth['jump'] * 100:+.3f}%)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
