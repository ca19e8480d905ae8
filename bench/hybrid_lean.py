#!/usr/bin/env python
"""The lean hybrid state predicts what the fp32 one did: both predictors on one AdamW trajectory.

The predictor before the lean state (K = 4 fp32 copies, a weight snapshot per true step; read from
git, commit 09c68bf) and the current one (2 fp16 updates, the update rebuilt from AdamW's state,
a banded Gram matrix) record the same true updates of one training run (the preset's shape and
AdamW settings, a next-token task on random ids over 512 symbols, 1 thread); from step 30 on,
every third true update is scored as a probe 1-2 steps ahead by both.  The phase machine is the
same code, so equal probe errors mean the same Predict/Correct decisions and predicted updates.

    .venv/bin/python bench/hybrid_lean.py --json                 # tiny and small, 60 steps (~minutes)

The last line is one JSON object: per preset, probes, mean probe error old and new, their largest
absolute difference; ``ok`` when every difference is below 0.01.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

OLD_COMMIT = "09c68bf"  # the last commit with the fp32 history
REPO = Path(__file__).resolve().parent.parent


def load_old() -> Any:
    """daemon/engine/hybrid.py as of OLD_COMMIT, imported as module ``hybrid_before``."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:daemon/engine/hybrid.py"],
                            check=True, capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="tritter-hybrid-old-"))
    (folder / "hybrid_before.py").write_text(source)
    spec = importlib.util.spec_from_file_location("hybrid_before", folder / "hybrid_before.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hybrid_before"] = module
    spec.loader.exec_module(module)
    return module


def compare(preset_name: str, steps: int, old: Any) -> dict[str, Any]:
    import torch

    from tritter.daemon.engine import hybrid as new
    from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
    from tritter.daemon.engine.trainer import make_optimizer
    from tritter.recipe.presets import get_preset

    torch.manual_seed(0)
    preset = get_preset(preset_name)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, preset)
    before, now = old.UpdatePredictor(model), new.UpdatePredictor(model)
    gen = torch.Generator().manual_seed(1)
    errors: dict[str, list[float]] = {"old": [], "new": []}
    for step in range(steps):
        lr = preset.train.lr * min(1.0, (step + 1) / preset.train.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = torch.randint(0, 512, (8, 64), generator=gen)
        model(x[:, :-1], labels=x[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.train.grad_clip)
        before.before_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe = step >= 30 and step % 3 == 0
        if probe:  # score this true update as the prediction 1 or 2 steps past the previous one
            before.ahead = now.ahead = 1 + step % 2
        e_old = before.after_step(lr)
        e_new = now.record(new.adamw_updates(optimizer, now.params))
        if probe:
            errors["old"].append(e_old)
            errors["new"].append(e_new)
    return {
        "preset": preset_name,
        "steps": steps,
        "probes": len(errors["old"]),
        "mean_error_old": round(statistics.fmean(errors["old"]), 5),
        "mean_error_new": round(statistics.fmean(errors["new"]), 5),
        "max_abs_diff": max(abs(a - b) for a, b in zip(errors["old"], errors["new"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="tiny only")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    old = load_old()
    presets = ["tiny"] if args.quick else args.presets.split(",")
    runs = [compare(p, args.steps, old) for p in presets]
    if not args.json:
        for r in runs:
            print(f"{r['preset']}: {r['probes']} probes, mean error old {r['mean_error_old']:.4f} new {r['mean_error_new']:.4f}, max diff {r['max_abs_diff']:.2e}")
    print(json.dumps({"runs": runs, "ok": all(r["max_abs_diff"] < 0.01 for r in runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
