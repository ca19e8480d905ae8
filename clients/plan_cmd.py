"""``tritterctl plan``: per-stage memory and FLOPs of a run, without a daemon or torch (recipe/planner.py)."""

from __future__ import annotations

import argparse
import json

from tritter.clients.cli_args import bounded_int
from tritter.protocol.config import MAX_GRAD_CKPT_EVERY, MAX_NPROC, PRESET_NAMES
from tritter.recipe.budget import BudgetError, parse_size
from tritter.recipe.planner import format_plan, plan_run


def _size(text: str) -> int:
    try:
        return parse_size(text, "--batch-tokens")
    except BudgetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_plan_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``plan`` with the flags of ``start`` that change what a stage costs."""
    plan = sub.add_parser("plan", help="per-stage parameters, memory and FLOPs of a run, without training")
    plan.add_argument("--start", default="tiny", choices=PRESET_NAMES, metavar="PRESET", help="first stage (default tiny)")
    plan.add_argument("--end", default="small", choices=PRESET_NAMES, metavar="PRESET", help="last stage (default small)")
    plan.add_argument("--cuda", action="store_true", help="plan for a GPU: bf16 autocast, fused AdamW, micro-batch fitted to 80 GB")
    plan.add_argument("--batch-tokens", type=_size, metavar="N", help="global batch per optimizer step in tokens (k/M suffixes)")
    plan.add_argument("--micro-batch", type=bounded_int(1, 1 << 20, "a sequence count"), metavar="N",
                      help="sequences per forward/backward on each process")
    plan.add_argument("--grad-ckpt-every", type=bounded_int(0, MAX_GRAD_CKPT_EVERY), metavar="N",
                      help="gradient checkpointing on every N-th block (0 = off; default the preset's)")
    plan.add_argument("--nproc", type=bounded_int(1, MAX_NPROC, "a process count"), default=1, metavar="N")
    hybrid = plan.add_mutually_exclusive_group()
    hybrid.add_argument("--hybrid", dest="hybrid", action="store_true", default=True, help="count the hybrid predictor (default)")
    hybrid.add_argument("--no-hybrid", dest="hybrid", action="store_false")
    plan.add_argument("--json", action="store_true", help="one JSON object: {\"stages\": [...]}")


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan (table, or one JSON object with ``--json``); exit 0.

    Raises ValueError (shown as one line by tritterctl) for --start bigger than --end or bad sizes.
    """
    plans = plan_run(
        args.start, args.end, cuda=args.cuda, batch_tokens=args.batch_tokens, micro_batch=args.micro_batch,
        grad_ckpt_every=args.grad_ckpt_every, nproc=args.nproc, hybrid=args.hybrid,
    )
    if args.json:
        print(json.dumps({"stages": [p.to_dict() for p in plans]}))
    else:
        print(format_plan(plans))
    return 0
