#!/usr/bin/env python
"""Growth study: which growth operator, timing, LR and optimizer handling let a grown run reach
the from-scratch loss with the fewest training FLOPs.

Ladder (``SHAPES``): every run ends in the same ``big`` model (d 128, 4 layers, 4 heads of 32,
SwiGLU 352, vocabulary 1,024, 0.94M parameters, 86% of them outside the embedding, so the
comparison is about the transformer blocks and not the embedding).  The vocabulary is a byte-level
BPE of 1,024 ids trained on the embedded corpus with ``tokenizers``' trainer
(``formats.tokenizer.train_bpe``, as ``tritterctl tokenizer train``).  Small models:

* ``narrow`` (d 64, 4 layers: width x2), ``half`` (d 128, 2 layers: depth x2), ``quarter``
  (d 128, 1 layer: depth x4).

Every run spends the same **training FLOPs** ``F`` (``--budget`` big-model steps of 16 x 128
tokens): scratch spends all of it in ``big``; a grown run spends ``share x F`` in the small model
and the rest in ``big`` (so it sees more tokens).  FLOPs per token are
``6 N + 12 L d T`` (Chowdhery et al. 2022, PaLM, appendix B: ``N`` = non-embedding parameters
plus the output layer, ``T`` = sequence length), counted for every stage.  The schedule is the
trainer's (``Trainer._set_lr``): AdamW (``make_optimizer``), per-stage linear warmup, earlier
stages hold their peak LR, the last stage decays (cosine to 10%), clip 1.0; one data stream
(``Batches``) continued across growth.

Variants (``VARIANTS``):

* operators: width zero-padding / cloning (``growth.grow``), depth by interleaved identity layers
  (``grow``'s new layers: exact) or by **stacking** (G_stack, Du et al. 2024, "Stacking Your
  Transformers", arXiv:2405.15319: the new layers are copies of the trained ones, layer ``j`` =
  old layer ``j mod L``; not function-preserving), depth factor 2 and 4;
* timing: the small model's FLOPs share (0.125 ... 0.75; 0.75 is the "late single expansion"
  of Meta's zero/one-layer progressive training);
* LR at growth: re-warmup (the trainer's) or continue at the peak; muP-style matrix LR scaling;
* optimizer state at growth: reset (the trainer's), carried (moments mapped into the grown
  tensors, zero for new entries) or an asymmetric reset (second moment carried, first reset),
  after SPARKLING's point that the two moments need different handling.

Figures, per variant over ``--seeds`` seeds (init and data order both follow the seed):

* ``flops_to_target``: training FLOPs at which the grown run's held-out loss first reaches the
  same seed's from-scratch final loss (linear interpolation between eval points) / ``F``;
  ``None`` for a seed that never reaches it (the mean is then over the seeds that did, and
  ``reached`` says how many);
* ``final``: the final held-out loss; ``jump``: relative held-out loss change across growth.

Losses are deterministic for one machine and thread count (``--threads`` per process, 1 by
default); runs are cached under ``--work`` by their settings, so a second invocation only trains
what is new.

    .venv/bin/python bench/growth_study.py --quick --json      # 3 variants, 1 seed, small budget
    .venv/bin/python bench/growth_study.py --jobs 2 --json     # the study (about 40 min on 2 cores)
    .venv/bin/python bench/growth_study.py --plot docs/img --from bench/results/growth_study.json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tritter.daemon.engine.data import Batches, default_corpus_text, heldout_size, split_embedded_documents
from tritter.daemon.engine.growth import grow, layer_mapping
from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, init_weights
from tritter.daemon.engine.schedule import lr_at
from tritter.daemon.engine.seeding import stage_generator
from tritter.daemon.engine.trainer import evaluate, make_optimizer
from tritter.formats.tokenizer import train_bpe
from tritter.recipe.presets import ModelShape, Preset, TrainSettings

STUDY_VERSION = 1  # bump when a change alters what a cached run would compute
GOAL = 0.70
VOCAB = 1024
SEQ = 128
BATCH = 16
SETTINGS = TrainSettings(batch_size=BATCH, seq_len=SEQ, lr=3e-3, warmup_steps=20, eval_every=0, checkpoint_every=0)
EVAL_BATCHES = 8  # 8 x 16 x 128 = 16k held-out tokens
CPU = torch.device("cpu")
SHAPES = {
    "big": ModelShape(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, vocab_size=VOCAB),
    "narrow": ModelShape(hidden_size=64, num_layers=4, num_heads=2, intermediate_size=176, vocab_size=VOCAB),
    "half": ModelShape(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=352, vocab_size=VOCAB),
    "quarter": ModelShape(hidden_size=128, num_layers=1, num_heads=4, intermediate_size=352, vocab_size=VOCAB),
}
DEFAULT_WORK = Path("/tmp/tritter-growth-study")


def log(msg: str) -> None:
    print(f"[growth-study] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Variant:
    """One way to reach ``big``.  ``small``: the key of the first stage's shape in ``SHAPES``
    (None: from scratch); ``width``: ``grow``'s method (zero, clone); ``depth``: identity (new
    layers are exact identities, ``grow``'s) or stack (copies of the trained layers); ``share``:
    the small stage's part of the FLOPs budget (0..1; 1 = a reference that is never grown);
    ``rewarmup``: warm the LR up again after growth (else continue at the peak); ``optimizer``:
    reset, carry or asym (AdamW state at growth); ``matrix_lr_scale``: LR multiplier of the
    grown model's matrices and embedding."""

    name: str
    small: str | None = "half"
    width: str = "zero"
    depth: str = "identity"
    share: float = 0.25
    rewarmup: bool = True
    optimizer: str = "reset"
    matrix_lr_scale: float = 1.0


SCRATCH = Variant("scratch", small=None, share=0.0)
# The schedule sweep is run on the best operator of the operator sweep: width x2 by zero-padding
# (the width runs ended ~0.4 nats below scratch, the depth runs above it; docs/growth.md).
BEST_OPERATOR = dict(small="narrow", width="zero")
VARIANTS = [
    SCRATCH,
    # operators, all at share 0.25, re-warmup, fresh AdamW (the trainer's handling)
    Variant("width-zero", small="narrow", width="zero"),
    Variant("width-clone", small="narrow", width="clone"),
    Variant("depth2-identity", small="half", depth="identity"),
    Variant("depth2-stack", small="half", depth="stack"),
    Variant("depth4-stack", small="quarter", depth="stack"),
    # timing (share of FLOPs in the small model; 0.75 = a late single expansion)
    Variant("zero-share0.125", **BEST_OPERATOR, share=0.125),
    Variant("zero-share0.5", **BEST_OPERATOR, share=0.5),
    Variant("zero-share0.75", **BEST_OPERATOR, share=0.75),
    # LR at growth
    Variant("zero-continue-lr", **BEST_OPERATOR, rewarmup=False),
    Variant("zero-matrix-lr0.5", **BEST_OPERATOR, matrix_lr_scale=0.5),
    # optimizer state at growth
    Variant("zero-carry-adam", **BEST_OPERATOR, optimizer="carry"),
    Variant("zero-asym-adam", **BEST_OPERATOR, optimizer="asym"),
    # reference, not a growth: the narrow model alone for the whole budget (does growing beat
    # just training the cheaper model?)
    Variant("narrow-only", small="narrow", share=1.0),
]
QUICK = ["scratch", "width-zero", "depth2-stack"]


# --------------------------------------------------------------------------- data and FLOPs
def load_tokens(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) uint16 token arrays of the embedded corpus under a 1,024-id BPE trained on
    it (documents joined by ``<|endoftext|>``, id 0); cached in ``work``."""
    path = work / f"tokens-v{VOCAB}.npy"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        docs = split_embedded_documents(default_corpus_text())
        tok = train_bpe(docs, VOCAB)
        ids = np.concatenate([np.array([*e.ids, 0], dtype=np.uint16) for e in tok.encode_batch(docs)])
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, ids)
        tmp.replace(path)
    ids = np.load(path)
    held = heldout_size(len(ids))
    return ids[:-held], ids[-held:]


def heldout_windows(heldout: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``EVAL_BATCHES`` fixed (x, y) batches of (BATCH, SEQ) int64, spread evenly over ``heldout``."""
    n = BATCH * EVAL_BATCHES
    starts = np.arange(n) * ((len(heldout) - SEQ - 1) // n)
    rows = np.stack([heldout[s : s + SEQ + 1] for s in starts]).astype(np.int64)
    x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, n, BATCH)]


def flops_per_token(shape: ModelShape, seq: int = SEQ) -> float:
    """Training FLOPs per token, forward + backward: ``6 N + 12 L d T`` (PaLM, Chowdhery et al.
    2022, appendix B), ``N`` = the blocks' matrices plus the (tied) output layer, ``T`` = ``seq``."""
    d, layers = shape.hidden_size, shape.num_layers
    n = layers * (4 * d * d + 3 * d * shape.intermediate_size) + shape.vocab_size * d
    return 6.0 * n + 12.0 * layers * d * seq


# --------------------------------------------------------------------------- growth operators
def stack_layers(model: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """G_stack (arXiv:2405.15319): a ``layers``-deep copy of ``model`` whose layer ``j`` is a copy of
    layer ``j mod L``; embedding, final norm and output layer are copied.  Not function-preserving."""
    src = model.shape
    grown = LlamaForCausalLM(replace(src, num_layers=layers))
    state = {}
    for key, value in grown.state_dict().items():
        if key.startswith("model.layers."):
            parts = key.split(".")
            parts[2] = str(int(parts[2]) % src.num_layers)
            key_src = ".".join(parts)
        else:
            key_src = key
        state[key] = model.state_dict()[key_src].clone()
    grown.load_state_dict(state)
    grown.train(model.training)
    return grown


def grow_variant(model: LlamaForCausalLM, v: Variant, generator: torch.Generator) -> tuple[LlamaForCausalLM, Callable[[int], int | None]]:
    """``model`` grown into ``SHAPES["big"]`` as ``v`` says; also each new layer's source layer
    (None for a fresh one), for carrying optimizer state."""
    big, src = SHAPES["big"], model.shape
    if v.depth == "stack":
        wide = replace(big, num_layers=src.num_layers)
        model = grow(model, wide, generator, v.width) if wide != src else model
        return stack_layers(model, big.num_layers), lambda j: j % src.num_layers
    mapping = layer_mapping(src.num_layers, big.num_layers)
    return grow(model, big, generator, v.width), {m: i for i, m in enumerate(mapping)}.get


@torch.no_grad()
def carry_adam_state(old_model: LlamaForCausalLM, old_opt: torch.optim.AdamW, new_model: LlamaForCausalLM,
                     new_opt: torch.optim.AdamW, source: Callable[[int], int | None], first_moment: bool) -> None:
    """Put ``old_opt``'s AdamW moments into ``new_opt`` for the grown ``new_model``: each grown
    tensor's old block gets the old moments (rescaled by the factor ``s`` the growth applied to
    that block: ``exp_avg / s``, ``exp_avg_sq / s^2``), every other entry zeros, and the step
    count carries over.  ``first_moment`` False keeps only the second moment (the asymmetric
    reset).  For zero-padding and stacking only (cloning spreads a weight over several blocks)."""
    old = dict(old_model.named_parameters())
    steps = next(iter(old_opt.state.values()))["step"]
    for name, p_new in new_model.named_parameters():
        old_name = name
        if name.startswith("model.layers."):
            parts = name.split(".")
            layer = source(int(parts[2]))
            old_name = None if layer is None else ".".join([*parts[:2], str(layer), *parts[3:]])
        m, v = torch.zeros_like(p_new), torch.zeros_like(p_new)
        p_old = old.get(old_name) if old_name else None
        if p_old is not None and old_opt.state.get(p_old):
            st = old_opt.state[p_old]
            block = tuple(slice(0, n) for n in p_old.shape)
            norm = float((p_old * p_old).sum())
            s = float((p_new[block] * p_old).sum()) / norm if norm > 0 else 1.0
            s = s if abs(s) > 1e-12 else 1.0
            if first_moment:
                m[block] = st["exp_avg"] / s
            v[block] = st["exp_avg_sq"] / (s * s)
        new_opt.state[p_new] = {"step": steps.clone(), "exp_avg": m, "exp_avg_sq": v}


# --------------------------------------------------------------------------- one run
def train_run(v: Variant, seed: int, budget_steps: int, evals: int, work: Path, threads: int) -> dict[str, Any]:
    """Train ``v`` with ``seed`` on a budget of ``budget_steps`` big-model steps' FLOPs; returns
    {curve: [(FLOPs / budget, held-out loss)], final, jump, steps, tokens, wall_s}."""
    torch.set_num_threads(threads)
    train, heldout = load_tokens(work)
    held = heldout_windows(heldout)
    big = SHAPES["big"]
    budget = budget_steps * BATCH * SEQ * flops_per_token(big)
    if v.small is None:
        stages = [(big, budget)]
    elif v.share >= 1:  # a reference: the small model alone for the whole budget, never grown
        stages = [(SHAPES[v.small], budget)]
    else:
        stages = [(SHAPES[v.small], v.share * budget), (big, (1 - v.share) * budget)]
    began = time.perf_counter()
    model = LlamaForCausalLM(stages[0][0])
    init_weights(model, stage_generator(seed, 0))
    batches = Batches(train, BATCH, SEQ, seed, 0)
    spent, curve, jump, steps_done = 0.0, [(0.0, evaluate(model, held, CPU))], None, []
    next_eval = 1
    opt = None
    for index, (shape, stage_flops) in enumerate(stages):
        preset = Preset("study", shape, SETTINGS)
        if index == 0:
            opt = make_optimizer(model, preset)
        else:
            before = curve[-1][1] if curve[-1][0] == spent / budget else evaluate(model, held, CPU)
            grown, source = grow_variant(model, v, stage_generator(seed, 1))
            new_opt = make_optimizer(grown, preset)
            if v.optimizer != "reset":
                carry_adam_state(model, opt, grown, new_opt, source, first_moment=v.optimizer == "carry")
            after = evaluate(grown, held, CPU)
            jump = (after - before) / before
            model, opt = grown, new_opt
        opt.param_groups[0]["scale"] = v.matrix_lr_scale if index > 0 else 1.0  # decay group: matrices + embedding
        per_step = BATCH * SEQ * flops_per_token(shape)
        steps = max(1, round(stage_flops / per_step))
        last = index == len(stages) - 1
        warmup = SETTINGS.warmup_steps if index == 0 or v.rewarmup else 0
        model.train()
        for step in range(steps):
            lr = lr_at(step, steps, SETTINGS.lr, warmup, SETTINGS.min_lr_ratio if last else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("scale", 1.0)
            x, y = batches.next()
            loss = model(x, labels=y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), SETTINGS.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            spent += per_step
            while next_eval <= evals and spent >= next_eval * budget / evals * (1 - 1e-9):
                next_eval += 1
                curve.append((spent / budget, evaluate(model, held, CPU)))
        steps_done.append(steps)
    if curve[-1][0] != spent / budget:
        curve.append((spent / budget, evaluate(model, held, CPU)))
    return {"curve": curve, "final": curve[-1][1], "jump": jump, "steps": steps_done,
            "tokens": sum(steps_done) * BATCH * SEQ, "wall_s": round(time.perf_counter() - began, 1)}


def _cache_key(v: Variant, seed: int, budget_steps: int, evals: int) -> str:
    fields = {k: val for k, val in asdict(v).items() if k != "name"}
    blob = json.dumps([STUDY_VERSION, fields, seed, budget_steps, evals, {k: asdict(s) for k, s in SHAPES.items()},
                       asdict(SETTINGS)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_run(v: Variant, seed: int, budget_steps: int, evals: int, work: Path, threads: int) -> dict[str, Any]:
    """``train_run``, or its result from an earlier invocation with the same settings."""
    path = work / "runs" / f"{_cache_key(v, seed, budget_steps, evals)}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = train_run(v, seed, budget_steps, evals, work, threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    log(f"{v.name} seed {seed}: final {result['final']:.4f} in {result['wall_s']:.0f} s")
    return result


# --------------------------------------------------------------------------- figures
def flops_to_reach(curve: list[list[float]], target: float) -> float | None:
    """First FLOPs fraction where ``curve`` [(FLOPs / budget, loss)] reaches ``target`` (linear
    interpolation between eval points); None when it never does."""
    prev = None
    for x, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(x)
            x0, l0 = prev
            return x0 + (x - x0) * (l0 - target) / (l0 - loss)
        prev = (x, loss)
    return None


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None  # no spread from one


def summarize(variants: list[Variant], seeds: list[int], runs: dict[tuple[str, int], dict]) -> list[dict[str, Any]]:
    """Per variant: FLOPs-to-target (mean, std, per seed, how many seeds reached it), final loss
    (mean, std), growth jump (max |relative|) and the mean curve."""
    rows = []
    for v in variants:
        per_seed = []
        for seed in seeds:
            r, target = runs[(v.name, seed)], runs[("scratch", seed)]["final"]
            ftt = flops_to_reach(r["curve"], target)
            per_seed.append({"seed": seed, "final": r["final"], "jump": r["jump"], "wall_s": r["wall_s"],
                             "flops_to_target": ftt, "tokens": r["tokens"],
                             # reached by the small model before it was grown (the growth did not do it)
                             "before_growth": v.small is not None and ftt is not None and ftt <= v.share})
        reached = [s["flops_to_target"] for s in per_seed if s["flops_to_target"] is not None]
        mean_ftt, std_ftt = _spread(reached)
        mean_final, std_final = _spread([s["final"] for s in per_seed])
        jumps = [abs(s["jump"]) for s in per_seed if s["jump"] is not None]
        curves = [runs[(v.name, seed)]["curve"] for seed in seeds]
        points = min(len(c) for c in curves)  # the same eval points for every seed (same steps)
        mean_curve = [[curves[0][i][0], statistics.fmean(c[i][1] for c in curves)] for i in range(points)]
        rows.append({**asdict(v), "flops_to_target": mean_ftt, "flops_to_target_std": std_ftt,
                     "reached": f"{len(reached)}/{len(seeds)}", "final": mean_final, "final_std": std_final,
                     "before_growth": sum(p["before_growth"] for p in per_seed),
                     "jump_max_abs": max(jumps) if jumps else None, "per_seed": per_seed, "mean_curve": mean_curve})
    return rows


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    """Loss vs FLOPs (mean over seeds) PNGs: one per sweep (operators, timing, LR and optimizer).
    Exits with one line when matplotlib is missing (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("growth_study: --plot needs matplotlib: .venv/bin/pip install -e '.[bench]'")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = {r["name"]: r for r in summary["variants"]}
    groups = {
        "growth-operators": ["scratch", "width-zero", "width-clone", "depth2-identity", "depth2-stack", "depth4-stack"],
        "growth-timing": ["scratch", "zero-share0.125", "width-zero", "zero-share0.5", "zero-share0.75", "narrow-only"],
        "growth-lr-optimizer": ["scratch", "width-zero", "zero-continue-lr", "zero-matrix-lr0.5", "zero-carry-adam",
                                "zero-asym-adam"],
    }
    written = []
    for title, names in groups.items():
        names = [n for n in names if n in rows]
        if len(names) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name in names:
            xs, ys = zip(*rows[name]["mean_curve"])
            ax.plot(xs, ys, label=name, linewidth=2.2 if name == "scratch" else 1.4,
                    color="black" if name == "scratch" else None)
        target = rows["scratch"]["final"]
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training FLOPs / scratch budget")
        ax.set_ylabel(f"held-out loss (nats/token), mean of {len(summary['seeds'])} seeds")
        lowest = min(loss for name in names for _, loss in rows[name]["mean_curve"])
        ax.set_ylim(lowest - 0.1, target + 1.6)  # the first evals (random init, ~ln V) would flatten the rest
        ax.set_title(title.replace("-", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{title}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


DOC_BEGIN = "<!-- growth-study:begin (generated by bench/growth_study.py --doc; do not edit) -->"
DOC_END = "<!-- growth-study:end -->"


def _describe(r: dict[str, Any]) -> tuple[str, str, str, str]:
    if r["small"] is None:
        return "—", "—", "—", "—"
    if r["share"] >= 1:
        return r["small"], "none (reference: never grown)", "1", "—"
    depth = {"identity": "identity layers", "stack": "stacked copies"}[r["depth"]]
    op = f"width {r['width']}" if SHAPES[r["small"]].hidden_size != SHAPES["big"].hidden_size else depth
    lr = ("re-warmup" if r["rewarmup"] else "continue") + (f", matrices x{r['matrix_lr_scale']:g}" if r["matrix_lr_scale"] != 1 else "")
    return r["small"], op, f"{r['share']:g}", f"{lr}; AdamW {r['optimizer']}"


def render_markdown(summary: dict[str, Any]) -> str:
    """The study's markdown block (between ``DOC_BEGIN`` / ``DOC_END``): the command, the ladder
    and one row per variant, every number taken from ``summary`` (this script's JSON)."""
    shapes = summary["shapes"]
    lines = [DOC_BEGIN, "",
             f"Budget: {summary['budget_steps']} steps of `big` ({summary['budget_steps'] * BATCH * SEQ:,} tokens, "
             f"{summary['budget_flops']:.3g} FLOPs); seeds {', '.join(map(str, summary['seeds']))}; "
             f"{summary['threads']} torch thread per run. Best (lowest mean FLOPs-to-target, ties broken by final "
             f"loss): **{summary['best']}**, FLOPs-to-target "
             f"**{summary['best_flops_to_target']:.3f}** (goal ≤ {summary['goal_flops_to_target']:.2f}: "
             f"{'met' if summary['ok'] else 'not met'}).", "",
             "| model | d | layers | parameters | FLOPs/token |", "|---|--:|--:|--:|--:|"]
    for name, s in shapes.items():
        lines.append(f"| {name} | {s['hidden_size']} | {s['num_layers']} | {s['parameters']:,} | {s['flops_per_token']:.3g} |")
    lines += ["", "| variant | from | operator | small share | LR; optimizer at growth | FLOPs-to-target (mean ± sd) | reached "
                  "| of which before growth | tokens | final loss (mean ± sd) | max \\|jump\\| |",
              "|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|"]
    for r in summary["variants"]:
        small, op, share, how = _describe(r)
        ftt = "—" if r["flops_to_target"] is None else f"{r['flops_to_target']:.3f} " + (
            "(n=1)" if r["flops_to_target_std"] is None else f"± {r['flops_to_target_std']:.3f}")
        jump = "—" if r["jump_max_abs"] is None else f"{r['jump_max_abs']:.1e}"
        name = f"**{r['name']}**" if r["name"] == summary["best"] else r["name"]
        before = "—" if r["small"] is None else str(r["before_growth"])
        lines.append(f"| {name} | {small} | {op} | {share} | {how} | {ftt} | {r['reached']} | {before} "
                     f"| {r['per_seed'][0]['tokens']:,} | {r['final']:.4f} ± {r['final_std'] or 0:.4f} | {jump} |")
    lines += ["", "Per seed (FLOPs-to-target / final loss):", "",
              "| variant | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
              "|---|" + "--:|" * len(summary["seeds"])]
    for r in summary["variants"]:
        cells = [("not reached" if p["flops_to_target"] is None else f"{p['flops_to_target']:.3f}") + f" / {p['final']:.4f}"
                 for p in r["per_seed"]]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", DOC_END]
    return "\n".join(lines)


def update_doc(doc: Path, block: str, write: bool = True) -> bool:
    """Replace the generated block in ``doc`` (only when ``write``); returns whether it differs.
    Raises ValueError when ``doc`` has no ``DOC_BEGIN`` ... ``DOC_END`` block."""
    text = doc.read_text()
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"{doc} has no generated growth-study block to replace")
    new = text[:start] + block + text[end + len(DOC_END):]
    if new != text and write:
        doc.write_text(new)
    return new != text


def read_summary(path: Path) -> dict[str, Any] | None:
    """The study's JSON from ``path``: this script's output (the JSON object on its last line) or a
    ``bench/run_all.py`` record of it (under ``result``); None for anything else (unreadable, empty,
    other JSON)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("result"), dict):
            data = data["result"]
        if isinstance(data, dict) and data.get("bench") == "growth_study" and {"shapes", "variants"} <= data.keys():
            return data
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"variants {', '.join(QUICK)}, seed 0, budget 60 steps")
    ap.add_argument("--budget", type=int, default=None, help="FLOPs budget in big-model steps of 16 x 128 tokens (default 300)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0)")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: all; scratch is always run)")
    ap.add_argument("--evals", type=int, default=16, help="held-out evals over the budget (default 16)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: deterministic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="token cache and finished runs")
    ap.add_argument("--plot", type=Path, default=None, help="write loss-vs-FLOPs PNGs into this folder")
    ap.add_argument("--from", dest="from_json", type=Path, default=None, help="plot from this JSON instead of training")
    ap.add_argument("--doc", type=Path, default=None, help="rewrite the generated block of this markdown file")
    ap.add_argument("--check", action="store_true", help="with --doc: exit 1 when the block differs, write nothing")
    ap.add_argument("--json", action="store_true", help="print only the final JSON line")
    args = ap.parse_args()

    if args.from_json is not None:
        if args.check and not args.doc:
            ap.error("--check needs --doc (the file to compare)")
        summary = read_summary(args.from_json)
        if summary is None:
            sys.exit(f"growth_study: {args.from_json} is not this script's JSON output nor a bench/run_all.py record of it")
        if not args.doc and not args.plot:  # nothing to write: show the block
            print(render_markdown(summary))
        for path in plot(summary, args.plot) if args.plot else []:
            print(path)
        if args.doc:
            try:
                changed = update_doc(args.doc, render_markdown(summary), write=not args.check)
            except (OSError, ValueError) as error:
                sys.exit(f"growth_study: {error}")
            if args.check and changed:
                sys.exit(f"growth_study: {args.doc} differs from {args.from_json}: re-render it with --doc")
            print(f"{args.doc}: {'updated' if changed else 'unchanged'}")
        return
    budget = args.budget or (60 if args.quick else 300)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    by_name = {v.name: v for v in VARIANTS}
    names = args.variants.split(",") if args.variants else (QUICK if args.quick else list(by_name))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    variants = [SCRATCH] + [by_name[n] for n in names if n != "scratch"]
    began = time.perf_counter()
    load_tokens(args.work)  # once, before the workers read it
    jobs = [(v, seed) for v in variants for seed in seeds]
    log(f"{len(jobs)} runs, budget {budget} big steps ({budget * BATCH * SEQ:,} scratch tokens), {args.jobs} jobs")
    runs: dict[tuple[str, int], dict] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {(v.name, seed): pool.submit(cached_run, v, seed, budget, args.evals, args.work, args.threads)
                   for v, seed in jobs}
        for key, future in futures.items():
            runs[key] = future.result()
    rows = summarize(variants, seeds, runs)
    grown = [r for r in rows if r["small"] is not None and r["share"] < 1 and r["flops_to_target"] is not None
             and r["reached"] == f"{len(seeds)}/{len(seeds)}"]
    best = min(grown, key=lambda r: (round(r["flops_to_target"], 6), r["final"])) if grown else None  # ties: lower loss
    params = {k: count_parameters(LlamaForCausalLM(s)) for k, s in SHAPES.items()}
    summary = {
        "bench": "growth_study",
        "budget_steps": budget,
        "budget_flops": budget * BATCH * SEQ * flops_per_token(SHAPES["big"]),
        "seeds": seeds,
        "shapes": {k: {**asdict(s), "parameters": params[k], "flops_per_token": flops_per_token(s)} for k, s in SHAPES.items()},
        "settings": asdict(SETTINGS),
        "goal_flops_to_target": GOAL,
        "best": None if best is None else best["name"],
        "best_flops_to_target": None if best is None else best["flops_to_target"],
        "ok": best is not None and best["flops_to_target"] <= GOAL,
        "threads": args.threads,
        "wall_s": round(time.perf_counter() - began, 1),
        "variants": rows,
    }
    if not args.json:
        print(f"\nbudget {budget} big-model steps; seeds {seeds}; scratch final {rows[0]['final']:.4f}")
        print(f"{'variant':<22} {'FLOPs->target':>14} {'reached':>8} {'final':>16} {'max |jump|':>10}")
        for r in rows:
            ftt = "n/a" if r["flops_to_target"] is None else f"{r['flops_to_target']:.3f} ± {r['flops_to_target_std'] or 0:.3f}"
            jump = "" if r["jump_max_abs"] is None else f"{r['jump_max_abs']:.2e}"
            print(f"{r['name']:<22} {ftt:>14} {r['reached']:>8} {r['final']:>9.4f} ± {r['final_std'] or 0:.4f} {jump:>10}")
    if args.plot:
        for path in plot(summary, args.plot):
            log(f"wrote {path}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
