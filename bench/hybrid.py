#!/usr/bin/env python
"""Hybrid (predicted) steps versus full training: skip rate, wall time, final eval loss.

For each preset, two in-process ``Trainer`` runs on the embedded corpus with the same seed and
the same token budget (``--steps`` optimizer steps, each on one batch): ``--hybrid`` (the
default schedule of daemon/engine/hybrid.py) and ``--no-hybrid``.  Reported side by side:
backward passes done and skipped (count and share), wall time of the training loop, final
held-out eval loss (the stage's ``completed`` StageEvent), and the ratios hybrid / full.

    .venv/bin/python bench/hybrid.py --quick     # tiny, 120 steps: about a minute on 2 cores
    .venv/bin/python bench/hybrid.py             # tiny 300 steps + small 200 steps
    .venv/bin/python bench/hybrid.py --json      # only the JSON line
    .venv/bin/python bench/hybrid.py --syncs --quick   # host syncs per step + true-step time ratio (tiny, 60 steps)
    .venv/bin/python bench/hybrid.py --state           # hybrid bytes/parameter and checkpoint size (tiny, small)

The last line printed is one JSON object: ``{"runs": [...], "ok": bool}`` where each run has
``preset``, ``steps``, ``skipped``, ``skip_share``, ``loss_full``, ``loss_hybrid``,
``loss_ratio``, ``wall_full_s``, ``wall_hybrid_s``, ``wall_ratio``, ``fallbacks`` and the mean
probe error; ``ok`` is true when every hybrid eval loss is within 3% of the full one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOSS_TOLERANCE = 0.03


class NoControls:
    def poll(self) -> str | None:
        return None

    def wait(self) -> str:  # never paused
        raise RuntimeError("no controls in the bench")


def log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[hybrid] {message}", file=sys.stderr, flush=True)


def train(preset: str, steps: int, seed: int, hybrid: bool, cache: Path, settings: Any) -> dict[str, Any]:
    from tritter.daemon.engine.trainer import Trainer
    from tritter.protocol.config import RunConfig
    from tritter.protocol.events import PhaseEvent, StageEvent, StepEvent

    events: list[Any] = []
    config = RunConfig(start=preset, end=preset, steps=steps, seed=seed, hybrid=hybrid, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(prefix="tritter-hybrid-bench-") as run_dir:
        trainer = Trainer("bench", config, Path(run_dir), events.append, NoControls(), cache, hybrid_settings=settings)
        started = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - started
    step_events = [e for e in events if isinstance(e, StepEvent)]
    done = [e for e in events if isinstance(e, StageEvent) and e.status == "completed"]
    phases = [e for e in events if isinstance(e, PhaseEvent)]
    errors = [e.prediction_error for e in step_events if e.prediction_error is not None and e.phase == "predict"]
    return {
        "wall_s": wall,
        "loop_s": sum(e.step_time_ms for e in step_events) / 1000.0,
        "eval_loss": done[-1].eval_loss,
        "backward": sum(not e.was_predicted for e in step_events),
        "predicted": sum(e.was_predicted for e in step_events),
        "fallbacks": sum(p.phase == "correct" for p in phases),
        "phases": [(p.step, p.phase, p.reason) for p in phases],
        "mean_error": statistics.fmean(errors) if errors else None,
        "max_error": max(errors) if errors else None,
        "losses": [e.loss for e in step_events],
        "median_true_ms": statistics.median([e.step_time_ms for e in step_events if not e.was_predicted]),
        "median_predicted_ms": statistics.median([e.step_time_ms for e in step_events if e.was_predicted] or [0.0]),
    }


def compare(preset: str, steps: int, seed: int, cache: Path, settings: Any, quiet: bool) -> dict[str, Any]:
    full = train(preset, steps, seed, False, cache, settings)
    log(f"{preset}: full   eval {full['eval_loss']:.4f} in {full['loop_s']:.1f}s", quiet)
    hyb = train(preset, steps, seed, True, cache, settings)
    log(
        f"{preset}: hybrid eval {hyb['eval_loss']:.4f} in {hyb['loop_s']:.1f}s, "
        f"{hyb['predicted']}/{steps} predicted, {hyb['fallbacks']} fallbacks",
        quiet,
    )
    for step, phase, reason in hyb["phases"]:
        log(f"  step {step:4d} -> {phase:8s} {reason}", quiet)
    return {
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "backward_full": full["backward"],
        "backward_hybrid": hyb["backward"],
        "skipped": hyb["predicted"],
        "skip_share": round(hyb["predicted"] / steps, 4),
        "loss_full": round(full["eval_loss"], 5),
        "loss_hybrid": round(hyb["eval_loss"], 5),
        "loss_ratio": round(hyb["eval_loss"] / full["eval_loss"], 5),
        # Training-loop time (sum of step times): excludes data loading and the stage evals.
        "wall_full_s": round(full["loop_s"], 3),
        "wall_hybrid_s": round(hyb["loop_s"], 3),
        "wall_ratio": round(hyb["loop_s"] / full["loop_s"], 4),
        # The same from per-step medians (robust to load spikes on a shared machine):
        # (true steps x median true-step ms + predicted x median predicted-step ms) / (steps x median full-step ms).
        "step_ms_full": round(full["median_true_ms"], 2),
        "step_ms_hybrid_true": round(hyb["median_true_ms"], 2),
        "step_ms_hybrid_predicted": round(hyb["median_predicted_ms"], 2),
        "wall_ratio_median": round(
            (hyb["backward"] * hyb["median_true_ms"] + hyb["predicted"] * hyb["median_predicted_ms"])
            / (steps * full["median_true_ms"]),
            4,
        ),
        # Load-robust estimate from one run: predicted vs true step times measured side by side
        # in the hybrid run, assuming a true step costs what a full step does.
        "wall_ratio_in_run": round(
            (hyb["backward"] + hyb["predicted"] * hyb["median_predicted_ms"] / hyb["median_true_ms"]) / steps, 4
        ),
        "fallbacks": hyb["fallbacks"],
        "mean_probe_error": None if hyb["mean_error"] is None else round(hyb["mean_error"], 4),
        "max_probe_error": None if hyb["max_error"] is None else round(hyb["max_error"], 4),
    }


class SyncCounter:
    """Counts host syncs: every ``Tensor.item``, ``tolist``, ``float()``, ``int()`` and ``bool()`` of a
    tensor (each waits for the device on CUDA; on CPU it is the same call count).  A CPU stand-in for
    ``torch.cuda.set_sync_debug_mode``, which only sees CUDA syncs."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__")

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> SyncCounter:
        import torch

        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.count += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


def syncs(preset: str, steps: int, seed: int, hybrid: bool, cache: Path, settings: Any) -> dict[str, Any]:
    """Host syncs and wall time per step, by step kind (warmup/full, predict-phase true, predicted)."""
    from tritter.daemon.engine.trainer import Trainer
    from tritter.protocol.config import RunConfig
    from tritter.protocol.events import StepEvent

    per_kind: dict[str, list[int]] = {"full": [], "true_in_predict": [], "predicted": [], "correct": []}
    times: dict[str, list[float]] = {k: [] for k in per_kind}
    counter = SyncCounter()
    last = [0]

    def emit(event: Any) -> None:
        if isinstance(event, StepEvent):
            kind = "predicted" if event.was_predicted else {"predict": "true_in_predict", "correct": "correct"}.get(event.phase, "full")
            per_kind[kind].append(counter.count - last[0])
            times[kind].append(event.step_time_ms)
            last[0] = counter.count

    config = RunConfig(start=preset, end=preset, steps=steps, seed=seed, hybrid=hybrid, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(prefix="tritter-hybrid-bench-") as run_dir:
        trainer = Trainer("bench", config, Path(run_dir), emit, NoControls(), cache, hybrid_settings=settings)
        with counter:
            trainer.run()
    tensors = sum(1 for _ in trainer.model.parameters()) if trainer.model is not None else 0
    return {
        "param_tensors": tensors,
        # The first step of each kind pays one-off costs (first eval, allocations): medians.
        "syncs_per_step": {k: statistics.median(v) for k, v in per_kind.items() if v},
        "max_syncs_per_step": {k: max(v) for k, v in per_kind.items() if v},
        "step_ms": {k: round(statistics.median(v), 2) for k, v in times.items() if v},
    }


def sync_report(preset: str, steps: int, seed: int, cache: Path, settings: Any, quiet: bool) -> dict[str, Any]:
    """Hybrid vs --no-hybrid side by side: syncs per step and the true-step time ratio."""
    full = syncs(preset, steps, seed, False, cache, settings)
    hyb = syncs(preset, steps, seed, True, cache, settings)
    true_ms = statistics.median(
        [hyb["step_ms"][k] for k in ("full", "true_in_predict", "correct") if k in hyb["step_ms"]]
    )
    result = {
        "preset": preset,
        "steps": steps,
        "param_tensors": hyb["param_tensors"],
        "syncs_no_hybrid": full["syncs_per_step"],
        "syncs_hybrid": hyb["syncs_per_step"],
        "max_syncs_hybrid": hyb["max_syncs_per_step"],
        "step_ms_no_hybrid": full["step_ms"],
        "step_ms_hybrid": hyb["step_ms"],
        # A true step of the hybrid run (its predictor bookkeeping included) over a --no-hybrid step.
        "true_step_ratio": round(true_ms / full["step_ms"]["full"], 4),
    }
    log(f"{preset}: syncs/step no-hybrid {full['syncs_per_step']}, hybrid {hyb['syncs_per_step']}", quiet)
    return result


def state_size(preset: str) -> dict[str, Any]:
    """Hybrid state bytes per parameter (in memory) and a mid-stage checkpoint's size with and
    without it, after `history` true updates of random AdamW steps (no training: seconds)."""
    import torch

    from tritter.daemon.engine.checkpoint import save_checkpoint
    from tritter.daemon.engine.hybrid import HybridController, adamw_updates
    from tritter.daemon.engine.model import LlamaForCausalLM
    from tritter.daemon.engine.trainer import make_optimizer
    from tritter.recipe.presets import get_preset

    spec = get_preset(preset)
    model = LlamaForCausalLM(spec.shape)
    optimizer = make_optimizer(model, spec)
    hybrid = HybridController(model, optimizer)
    for _ in range(hybrid.settings.history):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        optimizer.step()
        hybrid.predictor.record(adamw_updates(optimizer, hybrid.predictor.params))
    params = sum(p.numel() for p in model.parameters())
    in_memory = sum(t.numel() * t.element_size() for t in hybrid.tensors().values())
    with tempfile.TemporaryDirectory() as folder:
        with_state = save_checkpoint(Path(folder) / "a.safetensors", model, optimizer, {"hybrid": hybrid.state()}, hybrid.tensors())
        without = save_checkpoint(Path(folder) / "b.safetensors", model, optimizer, {})
    return {
        "preset": preset,
        "params": params,
        "hybrid_bytes_per_param": round(in_memory / params, 4),
        "checkpoint_mb": round(with_state.bytes / 1e6, 1),
        "checkpoint_without_hybrid_mb": round(without.bytes / 1e6, 1),
        "checkpoint_hybrid_bytes_per_param": round((with_state.bytes - without.bytes) / params, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, 120 steps (about a minute)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", default=None, help="comma-separated presets (default tiny,small; --quick: tiny)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default tiny 300, small 200; --quick 120)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a HybridSettings field")
    parser.add_argument("--cache", type=Path, default=None, help="token cache folder (default: a temporary one)")
    parser.add_argument("--state", action="store_true", help="hybrid state bytes/parameter and checkpoint size (tiny, small)")
    parser.add_argument("--syncs", action="store_true", help="count host syncs per step and time true steps, hybrid vs --no-hybrid")
    args = parser.parse_args(argv)

    import torch

    from tritter.daemon.engine.hybrid import DEFAULT_SETTINGS

    torch.use_deterministic_algorithms(True, warn_only=True)  # as the worker does
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(DEFAULT_SETTINGS, name))
        overrides[name] = kind(value)
    settings = dataclasses.replace(DEFAULT_SETTINGS, **overrides)
    presets = args.presets.split(",") if args.presets else (["tiny"] if args.quick else ["tiny", "small"])
    default_steps = {"tiny": 300, "small": 200}
    if args.state:
        print(json.dumps({"state": [state_size(p) for p in (args.presets.split(",") if args.presets else ["tiny", "small"])]}))
        return 0
    if args.syncs:
        with tempfile.TemporaryDirectory(prefix="tritter-hybrid-cache-") as tmp:
            reports = [
                sync_report(p, args.steps or (60 if args.quick else 100), args.seed, args.cache or Path(tmp), settings, args.json)
                for p in (args.presets.split(",") if args.presets else ["tiny"] if args.quick else ["tiny", "small"])
            ]
        print(json.dumps({"syncs": reports}))
        return 0
    runs = []
    with tempfile.TemporaryDirectory(prefix="tritter-hybrid-cache-") as tmp:
        cache = args.cache or Path(tmp)
        for preset in presets:
            steps = args.steps or (120 if args.quick else default_steps.get(preset, 200))
            runs.append(compare(preset, steps, args.seed, cache, settings, args.json))
    result = {
        "settings": dataclasses.asdict(settings),
        "runs": runs,
        "ok": all(r["loss_ratio"] <= 1.0 + LOSS_TOLERANCE for r in runs),
    }
    if not args.json:
        header = f"{'preset':7s} {'steps':>5s} {'skipped':>12s} {'loss full':>10s} {'loss hyb':>9s} {'ratio':>7s} {'wall full':>10s} {'wall hyb':>9s} {'ratio':>6s}"
        print(header)
        for r in runs:
            print(
                f"{r['preset']:7s} {r['steps']:5d} {r['skipped']:5d} ({r['skip_share']:5.1%}) "
                f"{r['loss_full']:10.4f} {r['loss_hybrid']:9.4f} {r['loss_ratio']:7.4f} "
                f"{r['wall_full_s']:9.1f}s {r['wall_hybrid_s']:8.1f}s {r['wall_ratio']:6.3f}"
            )
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
