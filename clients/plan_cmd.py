"""``tritterctl plan``: per-stage memory and FLOPs of a run, without a daemon or torch (recipe/planner.py)."""

from __future__ import annotations

import argparse
import json

from dataclasses import asdict

from tritter.protocol.cli_args import bounded_int, path_arg
from tritter.recipe.budget import budget_type
from tritter.protocol.config import MAX_GRAD_CKPT_EVERY, MAX_NPROC, PRESET_NAMES
from tritter.recipe.budget import parse_size, parse_steps, parse_tokens, per_stage
from tritter.formats.tokenizer import load_tokenizer_spec, model_vocab_size
from tritter.recipe.planner import budget_run, format_budget, format_plan, plan_run


def add_plan_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``plan`` with the flags of ``start`` that change what a stage costs."""
    plan = sub.add_parser("plan", help="per-stage parameters, memory and FLOPs of a run, without training")
    plan.add_argument("--start", default="tiny", choices=PRESET_NAMES, metavar="PRESET", help="first stage (default tiny)")
    plan.add_argument("--end", default="small", choices=PRESET_NAMES, metavar="PRESET", help="last stage (default small)")
    plan.add_argument("--cuda", action="store_true", help="plan for a GPU: bf16 autocast, fused AdamW, micro-batch fitted to 80 GB")
    plan.add_argument("--batch-tokens", type=budget_type(lambda t: parse_size(t, "--batch-tokens")), metavar="N", help="global batch per optimizer step in tokens (k/M/B decimal, Ki/Mi binary: 1Mi = 1,048,576)")
    plan.add_argument("--micro-batch", type=bounded_int(1, 1 << 20, "a sequence count"), metavar="N",
                      help="sequences per forward/backward on each process")
    plan.add_argument("--grad-ckpt-every", type=bounded_int(0, MAX_GRAD_CKPT_EVERY), metavar="N",
                      help="gradient checkpointing on every N-th block (0 = off; default the preset's)")
    plan.add_argument("--nproc", type=bounded_int(1, MAX_NPROC, "a process count"), default=1, metavar="N")
    hybrid = plan.add_mutually_exclusive_group()
    hybrid.add_argument("--hybrid", dest="hybrid", action="store_true", default=True, help="count the hybrid predictor (default)")
    hybrid.add_argument("--no-hybrid", dest="hybrid", action="store_false")
    compiled = plan.add_mutually_exclusive_group()
    compiled.add_argument("--compile", dest="compile", action="store_true", default=None,
                          help="count the torch.compile'd step's activations (the default with --cuda; needs --cuda)")
    compiled.add_argument("--no-compile", dest="compile", action="store_false", help="count eager PyTorch's")
    budget = plan.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=budget_type(parse_tokens), metavar="N[,N...]",
                        help="tokens per stage (k/M/B; one value or one per stage): adds each stage's training FLOPs, "
                             "its share of the run's and GPU-hours")
    budget.add_argument("--steps", type=budget_type(parse_steps), metavar="N[,N...]",
                        help="optimizer steps per stage instead of --tokens (x each stage's tokens per step)")
    plan.add_argument("--tokenizer", type=path_arg, metavar="PATH",
                      help="the run's tokenizer (as start's): its vocabulary sizes the embeddings")
    plan.add_argument("--json", action="store_true", help="one JSON object: {\"stages\": [...]}")
    # The rest of start's flags, so that a start command line can be planned as it is: they do
    # not change what a stage costs (the corpus only decides how many tokens there are to train on).
    same = plan.add_argument_group("accepted as in start, without effect on the plan")
    for flag in ("--corpus", "--text-field", "--name", "--hf-user", "--sample-prompts", "--seed", "--lr",
                 "--priority", "--keep-checkpoints", "--checkpoint-every", "--eval-every", "--sample-every"):
        same.add_argument(flag, metavar="X", dest=f"ignored_{flag[2:].replace('-', '_')}")
    for flag in ("--upload", "--deterministic", "--no-deterministic"):
        same.add_argument(flag, action="store_true", dest=f"ignored_{flag[2:].replace('-', '_')}")


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan (table, or one JSON object with ``--json``); exit 0.

    Raises ValueError (shown as one line by tritterctl) for --start bigger than --end or bad sizes,
    a ``--tokenizer`` that is not one (DataError),
    or ``--compile`` without ``--cuda`` (the compiled count is the bf16 CUDA step's), BudgetError
    when ``--tokens``/``--steps`` has neither one value nor one per stage.
    """
    if args.compile and not args.cuda:
        raise ValueError("--compile counts the compiled CUDA step (bf16 autocast): add --cuda")
    vocab = model_vocab_size(load_tokenizer_spec(args.tokenizer).ids) if args.tokenizer else None
    plans = plan_run(
        args.start, args.end, cuda=args.cuda, batch_tokens=args.batch_tokens, micro_batch=args.micro_batch,
        grad_ckpt_every=args.grad_ckpt_every, nproc=args.nproc, hybrid=args.hybrid, compiled=args.compile,
        vocab_size=vocab,
    )
    stages = [p.stage for p in plans]
    budgets = None
    if args.tokens:
        budgets = budget_run(plans, per_stage(args.tokens, stages, "--tokens"))
    elif args.steps:
        steps = per_stage(args.steps, stages, "--steps")
        budgets = budget_run(plans, [n * p.tokens_per_step for n, p in zip(steps, plans)])
    if args.json:
        out: dict[str, object] = {"stages": [p.to_dict() for p in plans]}
        if budgets is not None:
            out["budget"] = [asdict(b) for b in budgets]
        print(json.dumps(out))
    else:
        print(format_plan(plans))
        if budgets is not None:
            print()
            print(format_budget(budgets))
    return 0
