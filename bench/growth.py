#!/usr/bin/env python
"""Growth pays off, measured: ``small`` from scratch vs ``tiny`` -> ``small`` with growth, same token budget.

Both runs see the same training stream (the same ``Batches`` seed; the grown run's small stage
continues at the data position where its tiny stage stopped, as ``Trainer`` does), the same
held-out eval batches (``heldout_batches`` with small's batch/seq, ``EVAL_BATCHES`` = 8 as the
trainer) and the same seeded init (``seeding.stage_generator``, as the trainer).
Each stage uses its preset's ``TrainSettings``: AdamW (the trainer's ``make_optimizer``: decay on
matrices only) and its ``evaluate``, ``lr_at`` warmup per stage, grad clipping, and the trainer's
warmup-stable-decay: tiny holds its peak LR, only small (the last stage) decays.  Growth is
``grow(..., method="zero")`` as the trainer calls it (``--method clone`` to clone).  Tokens of both
stages count towards the budget (a tiny step is 16 x 128 tokens, a small step 8 x 128).

Figures:
* ``tokens_to_target_ratio``: tokens the grown run needed to reach the from-scratch run's final
  eval loss (linear interpolation between eval points), divided by the budget.  Goal <= 0.70.
* ``flops_to_target_ratio``: the same in training FLOPs (6 x params per token; tiny's tokens are ~3.7x
  cheaper than small's).
* ``growth_jump_rel``: (eval right after ``grow()`` - eval right before) / eval right before.

``--variants`` additionally runs the obvious levers on the same budget (tiny share, LR and warmup
after growth, AdamW state carried over instead of reset, growth method, cloning noise, tiny's
batch and LR decay) against the one scratch run.

    .venv/bin/python bench/growth.py --quick              # ~150k tokens, default variant only
    .venv/bin/python bench/growth.py                      # 600k tokens
    .venv/bin/python bench/growth.py --variants --json    # + the lever sweep

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tritter.daemon.engine.data import Batches, heldout_batches, load_token_data
from tritter.daemon.engine.growth import METHODS, grow, layer_mapping
from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, init_weights
from tritter.recipe.presets import Preset, get_preset
from tritter.daemon.engine.schedule import lr_at
from tritter.daemon.engine.seeding import stage_generator
from tritter.daemon.engine import trainer
from tritter.daemon.engine.trainer import EVAL_BATCHES, make_optimizer

CPU = torch.device("cpu")
GOAL = 0.70
DEFAULT_CACHE = Path("/tmp/tritter-bench-token-cache")


def log(msg: str) -> None:
    print(f"[growth] {msg}", file=sys.stderr, flush=True)


def evaluate(model: LlamaForCausalLM, batches: list) -> float:
    """Mean held-out loss (nats/token) of ``model`` on ``batches``: the trainer's ``evaluate``, on CPU."""
    return trainer.evaluate(model, batches, CPU)


@dataclass(frozen=True)
class Variant:
    name: str
    tiny_share: float
    lr_mult: float = 1.0  # small stage peak LR = preset LR x this
    warmup: int | None = None  # small stage warmup steps (None = preset's)
    carry_opt: bool = False  # carry tiny's AdamW moments into the grown model instead of a fresh AdamW
    tiny_batch: int | None = None  # tiny-stage batch size (None = the preset's)
    method: str = "zero"  # growth.grow's method: zero / clone
    clone_noise: float | None = None  # None = growth.CLONE_NOISE
    tiny_decay: bool = False  # True: tiny also decays (the trainer holds non-final stages at peak LR)


class Run:
    """One training run: a curve of (tokens, eval loss) points plus wall time."""

    def __init__(self, heldout: list, eval_every: int) -> None:
        self.heldout = heldout
        self.eval_every = eval_every
        self.tokens = 0
        self.next_eval = eval_every
        self.curve: list[tuple[int, float]] = []
        self.train_s = 0.0
        self.eval_s = 0.0

    def eval_point(self, model: LlamaForCausalLM) -> float:
        t0 = time.perf_counter()
        loss = evaluate(model, self.heldout)
        self.eval_s += time.perf_counter() - t0
        self.curve.append((self.tokens, loss))
        log(f"  {self.tokens:>8} tokens: eval {loss:.4f}")
        return loss

    def stage(
        self, model, preset: Preset, steps: int, batches: Batches, opt, peak_lr: float, warmup: int, decay: bool = True
    ) -> None:
        s = preset.train
        model.train()
        for step in range(steps):
            t0 = time.perf_counter()
            lr = lr_at(step, steps, peak_lr, warmup, s.min_lr_ratio if decay else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches.next()
            loss = model(x, labels=y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss {loss.item()} at {preset.name} step {step}")
            self.train_s += time.perf_counter() - t0
            self.tokens += x.numel()
            if self.tokens >= self.next_eval:
                while self.next_eval <= self.tokens:
                    self.next_eval += self.eval_every
                self.eval_point(model)


def steps_for(tokens: int, preset: Preset) -> int:
    return max(1, round(tokens / (preset.train.batch_size * preset.train.seq_len)))


@torch.no_grad()
def carry_optimizer_state(old_model, old_opt, new_model, new_opt) -> None:
    """Embed tiny's AdamW moments into the grown model's AdamW (zeros for new rows/cols/layers).

    A grown parameter whose old block is ``s x`` the old tensor gets ``exp_avg / s`` and
    ``exp_avg_sq / s^2`` there (the gradient of a reparametrised ``s * w`` is ``g / s``), so the
    Adam step direction/size for the old block is exactly what it would have been.
    """
    mapping = layer_mapping(old_model.shape.num_layers, new_model.shape.num_layers)
    new_params = dict(new_model.named_parameters())
    for name, p_old in old_model.named_parameters():
        new_name = name
        if name.startswith("model.layers."):
            parts = name.split(".")
            parts[2] = str(mapping[int(parts[2])])
            new_name = ".".join(parts)
        p_new = new_params[new_name]
        st_old = old_opt.state.get(p_old)
        if not st_old:
            continue
        block = tuple(slice(0, n) for n in p_old.shape)
        denom = float((p_old * p_old).sum())
        s = float((p_new[block] * p_old).sum()) / denom if denom > 0 else 1.0
        s = s if abs(s) > 1e-12 else 1.0
        m = torch.zeros_like(p_new)
        v = torch.zeros_like(p_new)
        m[block] = st_old["exp_avg"] / s
        v[block] = st_old["exp_avg_sq"] / (s * s)
        new_opt.state[p_new] = {"step": st_old["step"].clone(), "exp_avg": m, "exp_avg_sq": v}
    step = next(iter(old_opt.state.values()))["step"]
    for p in new_model.parameters():  # brand-new tensors (new layers): zero moments, same step count
        if p not in new_opt.state:
            new_opt.state[p] = {"step": step.clone(), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


def run_scratch(data, heldout, budget: int, seed: int, eval_every: int) -> Run:
    small = get_preset("small")
    run = Run(heldout, eval_every)
    model = LlamaForCausalLM(small.shape)
    init_weights(model, stage_generator(seed, 0))
    run.eval_point(model)
    opt = make_optimizer(model, small)
    batches = Batches(data.train, small.train.batch_size, small.train.seq_len, seed, 0)
    run.stage(model, small, steps_for(budget, small), batches, opt, small.train.lr, small.train.warmup_steps)
    if run.curve[-1][0] != run.tokens:
        run.eval_point(model)
    return run


def run_grown(data, heldout, budget: int, seed: int, eval_every: int, v: Variant) -> tuple[Run, dict[str, Any]]:
    tiny, small = get_preset("tiny"), get_preset("small")
    run = Run(heldout, eval_every)
    model = LlamaForCausalLM(tiny.shape)
    init_weights(model, stage_generator(seed, 0))
    run.eval_point(model)
    opt = make_optimizer(model, tiny)
    tiny_bs = v.tiny_batch or tiny.train.batch_size
    batches = Batches(data.train, tiny_bs, tiny.train.seq_len, seed, 0)
    tiny_steps = max(1, round(budget * v.tiny_share / (tiny_bs * tiny.train.seq_len)))
    run.stage(model, tiny, tiny_steps, batches, opt, tiny.train.lr, tiny.train.warmup_steps, v.tiny_decay)
    before = run.eval_point(model) if run.curve[-1][0] != run.tokens else run.curve[-1][1]

    noise = {} if v.clone_noise is None else {"clone_noise": v.clone_noise}
    grown = grow(model, small.shape, stage_generator(seed, 1), v.method, **noise)
    after = evaluate(grown, heldout)
    new_opt = make_optimizer(grown, small)
    if v.carry_opt:
        carry_optimizer_state(model, opt, grown, new_opt)
    small_tokens = budget - run.tokens
    small_steps = steps_for(small_tokens, small)
    # Small batches continue the same stream where tiny stopped (Trainer passes progress.position).
    batches = Batches(data.train, small.train.batch_size, small.train.seq_len, seed, batches.position)
    warmup = small.train.warmup_steps if v.warmup is None else v.warmup
    run.stage(grown, small, small_steps, batches, new_opt, small.train.lr * v.lr_mult, warmup)
    if run.curve[-1][0] != run.tokens:
        run.eval_point(grown)
    info = {
        "tiny_steps": tiny_steps,
        "small_steps": small_steps,
        "tokens_at_growth": tiny_steps * tiny_bs * tiny.train.seq_len,
        "eval_before_growth": before,
        "eval_after_growth": after,
        "growth_jump_rel": (after - before) / before,
    }
    return run, info


@functools.cache
def preset_parameters(name: str) -> int:
    return count_parameters(LlamaForCausalLM(get_preset(name).shape))


def train_flops(tokens: float, tokens_in_tiny: float) -> float:
    """Training FLOPs of a run that spent ``tokens_in_tiny`` of its ``tokens`` in tiny, the rest in small.

    6 x parameters per token (forward + backward; the tied embedding counted once, as the output
    layer it also is); attention over 128 positions adds < 5% to either model and is left out.
    """
    n_tiny, n_small = preset_parameters("tiny"), preset_parameters("small")
    in_tiny = min(tokens, tokens_in_tiny)
    return 6 * (n_tiny * in_tiny + n_small * (tokens - in_tiny))


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count where the curve reaches ``target`` (linear interpolation between points)."""
    prev = None
    for tok, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(tok)
            t0, l0 = prev
            return t0 + (tok - t0) * (l0 - target) / (l0 - loss)
        prev = (tok, loss)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="150k-token budget (a few minutes on 2 quiet cores)")
    ap.add_argument("--tokens", type=int, default=None, help="token budget for each run (default 600k, quick 150k)")
    ap.add_argument("--tiny-share", type=float, default=0.05, help="share of the budget spent in tiny (default 0.05)")
    ap.add_argument("--lr-mult", type=float, default=1.0, help="small-stage peak LR multiplier after growth")
    ap.add_argument("--warmup", type=int, default=None, help="small-stage warmup steps after growth (default: preset's)")
    ap.add_argument("--carry-opt", action="store_true", help="carry AdamW state across growth instead of resetting")
    ap.add_argument("--method", choices=METHODS, default="zero", help="growth method (default zero, as the trainer)")
    ap.add_argument("--clone-noise", type=float, default=None, help="cloning's symmetry-breaking noise (default: growth's)")
    ap.add_argument("--tiny-batch", type=int, default=None, help="tiny-stage batch size (default: the preset's)")
    ap.add_argument("--tiny-decay", action="store_true", help="decay tiny's LR too (the trainer decays the last stage only)")
    ap.add_argument("--variants", action="store_true", help="also run the lever sweep against the same scratch run")
    ap.add_argument("--evals", type=int, default=24, help="eval points over the budget (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="token cache dir (tokenising takes ~10 s)")
    ap.add_argument("--json", action="store_true", help="print only the final JSON line")
    ap.add_argument("--only-variants", default=None,
                    help="comma-separated variant names to run (from base + the --variants sweep; '' = none)")
    ap.add_argument("--save-scratch", type=Path, default=None, help="write the scratch curve to this file")
    ap.add_argument("--scratch-from", type=Path, default=None,
                    help="skip the scratch run and take its curve from a --save-scratch file (waited for at the end), "
                         "so variants can run in parallel processes")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    budget = args.tokens or (150_000 if args.quick else 600_000)
    # Eval interval: a multiple of both stages' step sizes (2048 and 1024 tokens).
    eval_every = max(2048, round(budget / args.evals / 2048) * 2048)
    t_start = time.perf_counter()
    data = load_token_data(args.cache)
    small = get_preset("small")
    heldout = heldout_batches(data, small.train.batch_size, small.train.seq_len, EVAL_BATCHES)
    if args.carry_opt and args.method == "clone":
        ap.error("--carry-opt maps AdamW state for zero-padding only; use --method zero")
    if args.clone_noise is not None and args.method != "clone":
        ap.error("--clone-noise applies to --method clone only")
    base = Variant(
        "base", args.tiny_share, args.lr_mult, args.warmup, args.carry_opt, args.tiny_batch,
        args.method, args.clone_noise, args.tiny_decay,
    )
    variants = [base]
    if args.variants or args.only_variants is not None:
        s = args.tiny_share
        variants += [
            Variant(f"share={s / 2:g}", s / 2),
            Variant(f"share={min(2 * s, 0.9):g}", min(2 * s, 0.9)),
            Variant("lr_mult=0.5", s, lr_mult=0.5),
            Variant("warmup=0", s, warmup=0),
            Variant("carry_opt", s, carry_opt=True),
            Variant("carry_opt+warmup=0", s, warmup=0, carry_opt=True),
            Variant("tiny_batch=8", s, tiny_batch=8),
            Variant("clone", s, method="clone"),
            Variant("clone+noise=0", s, method="clone", clone_noise=0.0),
            Variant("clone+noise=0.5", s, method="clone", clone_noise=0.5),
            Variant("tiny_decay", s, tiny_decay=True),
        ]

    if args.only_variants is not None:
        wanted = {n for n in args.only_variants.split(",") if n}
        unknown = wanted - {v.name for v in variants}
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in wanted]

    log(f"budget {budget} tokens, eval every {eval_every} tokens on {sum(x.numel() for x, _ in heldout)} held-out tokens, "
        f"torch threads {torch.get_num_threads()}")
    scratch_curve: list = []
    scratch_wall = float("nan")
    if args.scratch_from is None:
        t0 = time.perf_counter()
        scratch = run_scratch(data, heldout, budget, args.seed, eval_every)
        scratch_wall = time.perf_counter() - t0
        scratch_curve = scratch.curve
        log(f"scratch small: final eval {scratch_curve[-1][1]:.4f} after {scratch.tokens} tokens, "
            f"{scratch_wall:.0f} s ({scratch.train_s:.0f} s training)")
        if args.save_scratch:
            args.save_scratch.write_text(json.dumps(
                {"budget": budget, "seed": args.seed, "eval_every": eval_every, "curve": scratch_curve, "wall_s": scratch_wall}))

    results = []
    for v in variants:
        t0 = time.perf_counter()
        run, info = run_grown(data, heldout, budget, args.seed, eval_every, v)
        wall = time.perf_counter() - t0
        results.append((v, run, info, wall))
        log(f"grown [{v.name}]: final eval {run.curve[-1][1]:.4f}, jump {info['growth_jump_rel']:+.2e}, {wall:.0f} s")

    if args.scratch_from is not None:
        while not args.scratch_from.exists():
            time.sleep(5)
        time.sleep(1)
        saved = json.loads(args.scratch_from.read_text())
        if (saved["budget"], saved["seed"], saved["eval_every"]) != (budget, args.seed, eval_every):
            sys.exit(f"{args.scratch_from}: scratch run has a different budget/seed/eval interval")
        scratch_curve, scratch_wall = [tuple(p) for p in saved["curve"]], saved["wall_s"]
    target = scratch_curve[-1][1]
    pending, results = results, []
    for v, run, info, wall in pending:
        reach = tokens_to_reach(run.curve, target)
        flops = None if reach is None else train_flops(reach, info["tokens_at_growth"])
        res = {
            "variant": v.name,
            **{k: val for k, val in asdict(v).items() if k != "name"},
            **info,
            "tokens": run.tokens,
            "final_eval": run.curve[-1][1],
            "tokens_to_target": reach,
            "tokens_to_target_ratio": None if reach is None else reach / budget,
            "flops_to_target_ratio": None if flops is None else flops / train_flops(budget, 0),
            "wall_s": wall,
            "train_s": run.train_s,
            "curve": run.curve,
        }
        results.append(res)

    if not results:  # scratch only
        print(json.dumps({"bench": "growth", "budget_tokens": budget, "seed": args.seed,
                          "final_eval_scratch": target, "wall_s_scratch": round(scratch_wall, 1),
                          "scratch_curve": scratch_curve}), flush=True)
        return
    b = results[0]
    if not args.json:
        print(f"\nbudget {budget} tokens, seed {args.seed}, eval every {eval_every} tokens")
        print(f"scratch small: final eval {target:.4f}, wall {scratch_wall:.0f} s")
        print(f"{'variant':<22} {'tiny share':>10} {'final eval':>10} {'jump rel':>10} {'tok->target':>12} "
              f"{'flops->target':>13} {'wall s':>7}")
        for r in results:
            ratio, fratio = r["tokens_to_target_ratio"], r["flops_to_target_ratio"]
            print(f"{r['variant']:<22} {r['tiny_share']:>10.3g} {r['final_eval']:>10.4f} {r['growth_jump_rel']:>+10.1e} "
                  f"{'n/a' if ratio is None else f'{ratio:.3f}':>12} {'n/a' if fratio is None else f'{fratio:.3f}':>13} "
                  f"{r['wall_s']:>7.0f}")
        print("eval curves (tokens: scratch / grown[base]):")
        grown_at = dict(b["curve"])
        for tok, loss in scratch_curve:
            g = grown_at.get(tok)
            print(f"  {tok:>8}: {loss:.4f} / {'' if g is None else f'{g:.4f}'}")
    summary = {
        "bench": "growth",
        "budget_tokens": budget,
        "seed": args.seed,
        "tiny_share": b["tiny_share"],
        "tokens_to_target_ratio": b["tokens_to_target_ratio"],
        "flops_to_target_ratio": b["flops_to_target_ratio"],
        "goal_ratio": GOAL,
        "ok": b["tokens_to_target_ratio"] is not None and b["tokens_to_target_ratio"] <= GOAL,
        "growth_jump_rel": b["growth_jump_rel"],
        "final_eval_scratch": target,
        "final_eval_grown": b["final_eval"],
        "wall_s_scratch": round(scratch_wall, 1),
        "wall_s_grown": round(b["wall_s"], 1),
        "eval_every_tokens": eval_every,
        "threads": torch.get_num_threads(),
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "variants": [
            {k: (round(val, 5) if isinstance(val, float) else val) for k, val in r.items() if k != "curve"}
            for r in results
        ],
        "scratch_curve": scratch_curve,
        "grown_curve": b["curve"],
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
