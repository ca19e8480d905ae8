#!/usr/bin/env python
"""The planner's activation + transient memory against the CPU allocator's peak (issue 20 item 5).

One forward + backward of a preset (default 100m) under bf16 autocast on CPU (the stand-in for
CUDA's autocast), gradients already allocated, so the peak above the start is what the planner
calls kept activations + transient (logits, bf16 weight casts).  The peak is replayed from
``torch.profiler``'s raw CPU memory records (``bench/grad_ckpt.py:_profiled_peak``).

    .venv/bin/python bench/planner_peak.py --batch 1 --seq 256 --every 0 --json

The last line printed is one JSON object: ``measured_peak_bytes``, ``predicted_bytes``, ``ratio``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grad_ckpt import _profiled_peak  # noqa: E402

from tritter.daemon.engine.model import LlamaForCausalLM, init_weights  # noqa: E402
from tritter.recipe.budget import BatchPlan  # noqa: E402
from tritter.recipe.planner import plan_stage  # noqa: E402
from tritter.recipe.presets import get_preset  # noqa: E402


def planned(preset_name: str, batch: int, seq: int, every: int) -> dict[str, int]:
    """The planner's side alone, in bytes: ``plan_stage(..., cuda=True)`` kept activations and transient.

    Pure integer arithmetic (no torch), so identical on every machine:
    ``tests/test_bench_reproduce.py`` recomputes it against ``bench/results/planner_peak.json``.
    """
    plan = plan_stage(get_preset(preset_name), cuda=True,
                      batch=BatchPlan(micro_batch=batch, accum=1, world=1, seq_len=seq), grad_ckpt_every=every,
                      hybrid=False)
    return {"predicted_bytes": plan.activations_bytes + plan.transient_bytes,
            "activations_bytes": plan.activations_bytes, "transient_bytes": plan.transient_bytes}


def measure(preset_name: str, batch: int, seq: int, every: int) -> dict[str, object]:
    """Measured peak vs ``planner.plan_stage(..., cuda=True)`` activations + transient, in bytes."""
    preset = get_preset(preset_name)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, torch.Generator().manual_seed(0))
    model.set_grad_checkpointing(every)
    model.train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, preset.shape.vocab_size, (batch, seq), generator=gen)
    y = torch.randint(0, preset.shape.vocab_size, (batch, seq), generator=gen)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, labels=y)
        loss.backward()
    peak = _profiled_peak(prof)
    plan = planned(preset_name, batch, seq, every)
    predicted = plan["predicted_bytes"]
    return {"preset": preset_name, "batch": batch, "seq": seq, "every": every, "measured_peak_bytes": peak,
            "predicted_bytes": predicted, "ratio": peak / predicted if peak else None,
            "activations_bytes": plan["activations_bytes"], "transient_bytes": plan["transient_bytes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="100m")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--every", type=int, default=0, help="grad checkpointing every N-th block (0 = off)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.preset, args.batch, args.seq, args.every)
    if not args.json:
        print(f"{args.preset} {args.batch}x{args.seq} N={args.every}: measured {result['measured_peak_bytes']:,} B, "
              f"planner {result['predicted_bytes']:,} B")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
