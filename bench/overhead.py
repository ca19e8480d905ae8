#!/usr/bin/env python
"""Per-step overhead of training through tritterd versus a plain PyTorch loop.

Both sides train the same preset on the same batches with the same AdamW, LR schedule and
step count.  The tritterd side is the full stack a user gets: a real ``tritterd`` (event log,
bus, supervised recorder writing metrics.jsonl), its worker process, plus one extra live
subscriber (``tritterctl events --follow --json``) and ``tritterctl wait``.  The plain side is a
minimal in-process loop, run in its own subprocess with the same interpreter and environment
(so the same torch thread settings) as the worker.

Per-step wall time on both sides comes from one timestamp taken after each optimizer step
(the step events' ``ts`` for tritterd, ``time.time()`` after ``loss.item()`` for the plain
loop): the median of consecutive differences, skipping the first ``--warmup`` steps.  The
two sides alternate (plain/tritterd, then tritterd/plain, ...) so that machine noise and
drift hit both; the reported ``ratio`` is the median of the per-pair ratios.

    .venv/bin/python bench/overhead.py --quick      # smoke run, under about a minute
    .venv/bin/python bench/overhead.py              # tiny, 150 steps, 5 pairs

The last line printed is one JSON object (``ratio``, ``plain_ms``, ``tritterd_ms``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tritter.protocol.config import PRESET_NAMES  # light: no torch in the driver process

BIN = Path(sys.executable).parent
TARGET_RATIO = 1.02


def tool(name: str) -> str:
    # The venv's console scripts, so the daemon and its worker run the interpreter we run.
    path = BIN / name
    return str(path) if path.exists() else name


def log(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


NOISY_JITTER = 0.15  # a run whose step gaps have IQR/median above this was disturbed
NOISY_SPREAD = 0.05  # per-pair ratios further apart than this: the machine was not quiet


def step_timing(timestamps: list[float], warmup: int) -> tuple[float, float]:
    """(median ms, IQR/median) of the gaps between consecutive step-end timestamps after ``warmup`` steps."""
    kept = timestamps[warmup:]
    gaps = sorted(b - a for a, b in zip(kept, kept[1:]))
    if len(gaps) < 2:
        raise ValueError(f"only {len(gaps)} step gaps after {warmup} warmup steps; use more --steps")
    # Median, not mean: a shared 2-core machine gives occasional multi-x outliers.
    median = statistics.median(gaps)
    q1, _, q3 = statistics.quantiles(gaps, n=4)
    return median * 1000.0, (q3 - q1) / median


# --------------------------------------------------------------------------- plain loop (child)


def plain_child(preset_name: str, steps: int, seed: int, cache_dir: Path) -> None:
    """The minimal loop; prints one JSON line with per-step end timestamps and losses."""
    import torch

    from tritter.daemon.engine.data import Batches, load_token_data
    from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
    from tritter.recipe.presets import get_preset
    from tritter.daemon.engine.schedule import lr_at
    from tritter.daemon.engine.seeding import stage_generator
    from tritter.daemon.engine.trainer import make_optimizer

    torch.use_deterministic_algorithms(True, warn_only=True)  # as the worker does
    preset = get_preset(preset_name)
    settings = preset.train
    data = load_token_data(cache_dir)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, stage_generator(seed, 0))  # the trainer's stage-0 init, so weights (and losses) match
    model.set_grad_checkpointing(settings.grad_ckpt_every)
    model.train()
    optimizer = make_optimizer(model, preset)
    batches = Batches(data.train, settings.batch_size, settings.seq_len, seed, 0)

    timestamps: list[float] = []
    losses: list[float] = []
    for step in range(steps):
        lr = lr_at(step, steps, settings.lr, settings.warmup_steps, settings.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches.next()
        loss = model(x, labels=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        timestamps.append(time.time())  # same clock and same point in the step as StepEvent.ts
    print(json.dumps({"ts": timestamps, "losses": losses, "threads": torch.get_num_threads()}), flush=True)


def run_plain(args: argparse.Namespace, cache_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [
        sys.executable, os.path.abspath(__file__), "--plain-child",
        "--preset", args.preset, "--steps", str(args.steps), "--seed", str(args.seed), "--cache", str(cache_dir),
    ]
    # subprocess.run kills the child if we are interrupted, so no orphan keeps training.
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"plain loop exited with {result.returncode}:\n{result.stderr[-4000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    ms, jitter = step_timing(out["ts"], args.warmup)
    return {"ms": ms, "jitter": jitter, "losses": out["losses"], "threads": out["threads"]}


# --------------------------------------------------------------------------- through tritterd


def ctl(home: Path, *argv: str, env: dict[str, str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tool("tritterctl"), "--home", str(home), *argv],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"tritterctl {' '.join(argv)} -> {result.returncode}: {result.stderr.strip()}")
    return result


def stop_process(process: subprocess.Popen[Any] | None, grace: float, group: bool = False) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL (the whole session for the daemon)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the worker and recorder too
        else:
            process.kill()
        process.wait(timeout=10)


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def run_tritterd(args: argparse.Namespace, root: Path, index: int, cache_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    home = root / f"h{index}"  # short: ipc socket paths are limited to ~100 bytes
    home.mkdir()
    (home / "cache").symlink_to(cache_dir)  # share the token cache: no 9 s re-tokenising per run
    stderr_path = root / f"tritterd{index}.stderr"
    daemon: subprocess.Popen[bytes] | None = None
    follower: subprocess.Popen[bytes] | None = None
    try:
        with open(stderr_path, "wb") as stderr:
            daemon = subprocess.Popen(
                [tool("tritterd"), "--home", str(home)],  # with its supervised recorder (the default)
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                start_new_session=True,  # so cleanup can take the worker and recorder with it
            )
        deadline = time.monotonic() + 60
        while ctl(home, "runs", env=env, check=False, timeout=20).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tritterd did not come up:\n{stderr_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        # The extra live subscriber a user watching the run would have.
        follower = subprocess.Popen(
            [tool("tritterctl"), "--home", str(home), "events", "--follow", "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        run_id = ctl(
            home, "start", "--start", args.preset, "--end", args.preset, "--steps", str(args.steps),
            "--seed", str(args.seed),
            "--no-hybrid",  # every step trained fully, exactly like the plain loop
            "--checkpoint-every", str(args.steps + 1),  # no periodic checkpoint I/O inside the timed steps
            env=env,
        ).stdout.strip()
        waited = ctl(home, "wait", run_id, "--timeout", str(args.timeout), env=env, timeout=args.timeout + 30, check=False)
        if waited.returncode != 0:
            raise RuntimeError(
                f"run {run_id} did not complete ({waited.stdout.strip()} {waited.stderr.strip()}):\n"
                f"{stderr_path.read_text(errors='replace')[-4000:]}"
            )
        follower_alive = follower.poll() is None
        events = [json.loads(line) for line in ctl(home, "events", "--json", env=env).stdout.splitlines() if line.strip()]
        step_events = sorted((e for e in events if e["kind"] == "step" and e["run_id"] == run_id), key=lambda e: e["step"])
        if len(step_events) != args.steps:
            raise RuntimeError(f"run {run_id} logged {len(step_events)} step events, expected {args.steps}")
        # The recorder is asynchronous: give it a bounded moment to finish metrics.jsonl.
        metrics = home / "runs" / run_id / "metrics.jsonl"
        deadline = time.monotonic() + 10
        while count_lines(metrics) < args.steps and time.monotonic() < deadline:
            time.sleep(0.1)
        ms, jitter = step_timing([e["ts"] for e in step_events], args.warmup)
        return {
            "ms": ms,
            "jitter": jitter,
            "losses": [e["loss"] for e in step_events],
            "metrics_lines": count_lines(metrics),
            "follower_alive": follower_alive,
        }
    finally:
        stop_process(follower, grace=5)
        stop_process(daemon, grace=60, group=True)


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-step overhead of tritterd vs a plain PyTorch loop.")
    parser.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="preset trained on both sides (default tiny)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 150; 40 with --quick)")
    parser.add_argument("--repeats", type=int, help="plain/tritterd pairs (default 5; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=5, help="leading steps left out of the timing (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="set OMP/MKL_NUM_THREADS for both sides (default: inherit)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run (default 1800)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 1 pair (under about a minute)")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (daemon logs) for inspection")
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 40 if args.quick else 150
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.plain_child:
        return args
    if args.steps < args.warmup + 3:
        parser.error(f"--steps must be at least --warmup + 3 = {args.warmup + 3}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    root = Path(tempfile.mkdtemp(prefix="tt-ovh-", dir="/tmp"))
    try:
        cache_dir = root / "cache"
        cache_dir.mkdir()
        log(f"tokenising the corpus once into {cache_dir}")
        # A 0-step plain child fills the shared token cache, outside any timed run.
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--plain-child", "--preset", args.preset, "--steps", "0",
             "--seed", str(args.seed), "--cache", str(cache_dir)],
            check=True, stdout=subprocess.DEVNULL, env=env, stdin=subprocess.DEVNULL, timeout=args.timeout,
        )
        pairs: list[dict[str, Any]] = []
        for i in range(args.repeats):
            # ABBA order: alternating which side goes first cancels a linear drift in machine load.
            order = ("plain", "tritterd") if i % 2 == 0 else ("tritterd", "plain")
            result: dict[str, dict[str, Any]] = {}
            for side in order:
                log(f"pair {i + 1}/{args.repeats}: {side} ({args.preset}, {args.steps} steps)")
                result[side] = run_plain(args, cache_dir, env) if side == "plain" else run_tritterd(args, root, i, cache_dir, env)
                log(f"pair {i + 1}/{args.repeats}: {side} {result[side]['ms']:.2f} ms/step")
            plain, daemon = result["plain"], result["tritterd"]
            pairs.append({
                "plain_ms": round(plain["ms"], 3),
                "tritterd_ms": round(daemon["ms"], 3),
                "ratio": round(daemon["ms"] / plain["ms"], 4),
                "plain_jitter": round(plain["jitter"], 3),
                "tritterd_jitter": round(daemon["jitter"], 3),
                # Same model, data and optimizer: on CPU the losses should be bit-identical.
                "losses_identical": plain["losses"] == daemon["losses"],
                "max_loss_diff": max(abs(a - b) for a, b in zip(plain["losses"], daemon["losses"])),
                "metrics_lines": daemon["metrics_lines"],
                "follower_alive": daemon["follower_alive"],
                "threads": plain["threads"],
            })
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    plain_ms = statistics.median(p["plain_ms"] for p in pairs)
    tritterd_ms = statistics.median(p["tritterd_ms"] for p in pairs)
    ratio = statistics.median(p["ratio"] for p in pairs)
    ratios = [p["ratio"] for p in pairs]
    jitter = max(max(p["plain_jitter"], p["tritterd_jitter"]) for p in pairs)
    return {
        "bench": "overhead",
        "ratio": round(ratio, 4),  # median of per-pair ratios (the headline number)
        "plain_ms": round(plain_ms, 3),
        "tritterd_ms": round(tritterd_ms, 3),
        "ratio_of_medians": round(tritterd_ms / plain_ms, 4),
        # Spread of the per-pair ratios: a wide one means the machine was too noisy to trust.
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "max_jitter": jitter,  # worst IQR/median of step gaps over all runs
        # True: the machine was busy (jittery steps or disagreeing pairs); rerun on a quiet one.
        "noisy": jitter > NOISY_JITTER or max(ratios) - min(ratios) > NOISY_SPREAD,
        "target": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "steps": args.steps,
        "preset": args.preset,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": pairs[0]["threads"],
        "losses_identical": all(p["losses_identical"] for p in pairs),
        "metrics_complete": all(p["metrics_lines"] == args.steps for p in pairs),
        "pairs": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_child:
        plain_child(args.preset, args.steps, args.seed, args.cache)
        return 0
    # SIGTERM -> SystemExit, so the finally blocks still stop the daemons and remove temp dirs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary = bench(args)
    if not args.json:
        print(f"{'pair':>4} {'plain ms':>9} {'tritterd ms':>12} {'ratio':>7} {'jitter':>13}  losses")
        for i, p in enumerate(summary["pairs"], start=1):
            same = "identical" if p["losses_identical"] else f"max diff {p['max_loss_diff']:.2e}"
            jitter = f"{p['plain_jitter']:.2f}/{p['tritterd_jitter']:.2f}"
            print(f"{i:>4} {p['plain_ms']:>9.2f} {p['tritterd_ms']:>12.2f} {p['ratio']:>7.4f} {jitter:>13}  {same}")
        verdict = "within" if summary["within_target"] else "OVER"
        print(f"median ratio {summary['ratio']:.4f} ({verdict} target {TARGET_RATIO}); "
              f"{summary['preset']}, {summary['steps']} steps, {summary['threads']} torch threads")
        if summary["noisy"]:
            print("warning: the machine was noisy (step-gap jitter or pair spread high); rerun on a quiet machine")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
