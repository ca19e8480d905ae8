"""``tritterctl``: drive the daemon (start, runs, status, wait, stop, pause, resume, checkpoint, extend, upload, events; plan needs no daemon).

Exit codes (the convention of every tritter command, docs/operations.md): 0 success (for
``wait``: the run completed); 1 ``wait``: the run failed, was stopped, or paused itself (a full
disk) and will not complete by itself; 2 an error (bad flag or value, daemon not running,
unknown run, refused request); 124 ``wait --timeout`` ran out; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from tritter.protocol.cli_args import MAX_COUNT, bounded_float, bounded_int, nonempty_text, path_arg
from tritter.recipe.budget import budget_type
from tritter.clients.plan_cmd import add_plan_parser, run_plan
from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.data_cmd import add_tokenizer_parser, prepare_line, run_tokenizer
from tritter.clients.keygen import write_key_pair
from tritter.clients.subscription import DISCONNECTED, LIVE, SILENCE_BEATS, Subscription
from tritter.clients.target import Target, add_target_arguments, target_from_args
from tritter.protocol.config import MAX_GRAD_CKPT_EVERY, MAX_NPROC, MAX_PRIORITY, MAX_SEED, MAX_STEPS, PRESET_NAMES, RunConfig, validate_config
from tritter.recipe.budget import parse_size, parse_steps, parse_tokens
from tritter.recipe.budget import check_config as check_budgets
from tritter.protocol.control import (
    START_REPLY_TIMEOUT_S, Checkpoint, Extend, Pause, Reply, Request, Resume, Runs, Start, Status, Stop, Upload,
)
from tritter.clients.monitoring_cli import format_monitoring, parse_kinds, read_prompts, status_lines
from tritter.protocol.events import EVENT_KINDS
from tritter.protocol.exitcodes import version_line
from tritter.protocol.oserrors import error_line
from tritter.protocol.events import AnyEvent, CheckpointEvent, PhaseEvent, PrepareEvent, RunEvent, StageEvent, StepEvent, UploadEvent
from tritter.protocol.state import TERMINAL, RunState, is_held, stage_status
from tritter.recipe.eta import eta_seconds
from tritter.formats.hub_names import default_run_name, repo_id_problem
from tritter.formats.text import fit as fit_text
from tritter.formats.text import fmt_duration, printable
from tritter.protocol.wire import ProtocolError, encode_json

EXIT_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_TIMEOUT = 124
MAX_TIMEOUT_S = 10 * 365 * 86400.0  # ten years: longer is a typo, and asyncio cannot wait for inf


class UserError(Exception):
    """Something to tell the user in one line; exit 2."""


class Parser(argparse.ArgumentParser):
    """``tritterctl``'s ArgumentParser (its subparsers too): a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:  # one clear line, not a usage dump
        """Print ``tritterctl: error: MESSAGE (see: tritterctl --help)`` on stderr and exit ``EXIT_ERROR`` (2);
        never returns."""
        self.exit(EXIT_ERROR, f"tritterctl: error: {message} (see: tritterctl --help)\n")


def build_parser() -> Parser:
    """The ``tritterctl`` argument parser: the target flags and every subcommand with its flags (values
    range-checked by their types)."""
    parser = Parser(prog="tritterctl", description="Drive tritterd.", epilog=__doc__.split("\n\n", 1)[1])
    add_target_arguments(parser)
    parser.add_argument("--version", action="version", version=version_line("tritterctl"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    start = sub.add_parser("start", help="start a progressive run; prints its id")
    start.add_argument("--start", default="tiny", metavar="PRESET", help=f"first stage ({', '.join(PRESET_NAMES)}; default tiny)")
    start.add_argument("--end", default="small", metavar="PRESET", help="last stage (default small)")
    budget = start.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=budget_type(parse_steps), metavar="N[,N...]",
                        help="optimizer steps per stage, one value or one per stage (default 200)")
    budget.add_argument("--tokens", type=budget_type(parse_tokens), metavar="N[,N...]",
                        help="tokens per stage instead of --steps (suffixes k, M, B), one value or one per stage")
    start.add_argument("--batch-tokens", type=budget_type(lambda t: parse_size(t, "--batch-tokens")), metavar="N",
                       help="global batch per optimizer step in tokens, by gradient accumulation (k/M/B decimal, Ki/Mi binary: 1Mi = 1,048,576; default: the preset's)")
    start.add_argument("--micro-batch", type=bounded_int(1, 1 << 20, "a sequence count"), metavar="N",
                       help="sequences per forward/backward on each process (default: the preset's; probed on CUDA)")
    start.add_argument("--lr", type=bounded_float(0.0, 1.0, "a learning rate", low_open=True), metavar="X",
                       help="peak learning rate of every stage (default: each preset's)")
    start.add_argument("--keep-checkpoints", type=bounded_int(1, 1 << 20, "a checkpoint count"), metavar="N",
                       help="keep the latest N checkpoints, plus each stage's last and the best eval (default 3)")
    start.add_argument("--priority", type=bounded_int(-MAX_PRIORITY, MAX_PRIORITY, "a priority"), default=0, metavar="N",
                       help="place in tritterd's queue when its slots are busy: higher starts first (default 0)")
    start.add_argument("--corpus", type=path_arg,
                       help="text file, folder, JSONL (.gz/.zst), Parquet, or pre-tokenized .bin/.npy (docs/data.md)")
    start.add_argument("--tokenizer", type=path_arg, metavar="PATH",
                       help="tokenizer.json or a Hugging Face folder (default: the embedded 8192-id BPE)")
    start.add_argument("--text-field", type=nonempty_text("a field name"), default="text", metavar="NAME", help="JSONL field / Parquet column (default text)")
    start.add_argument("--cuda", action="store_true", help="train on the GPU (bf16)")
    start.add_argument("--upload", action="store_true", help="upload each completed stage to the Hugging Face hub")
    start.add_argument("--hf-user", metavar="USER", help="hub user or organisation for --upload")
    start.add_argument("--name", default="", help="a name for the run (default tritter-START-END)")
    start.add_argument("--seed", type=bounded_int(0, MAX_SEED, "a seed"), default=0)
    hybrid = start.add_mutually_exclusive_group()
    hybrid.add_argument("--hybrid", dest="hybrid", action="store_true", default=True, help="Warmup/Full/Predict/Correct (default)")
    hybrid.add_argument("--no-hybrid", dest="hybrid", action="store_false", help="train every step fully")
    start.add_argument("--grad-ckpt-every", type=bounded_int(0, MAX_GRAD_CKPT_EVERY), metavar="N", help="gradient checkpointing on every N-th block (0 = off)")
    start.add_argument("--nproc", type=bounded_int(1, MAX_NPROC, "a process count"), default=1, metavar="N", help="data-parallel processes")
    start.add_argument("--checkpoint-every", type=bounded_int(1, MAX_STEPS, "a step count"), metavar="N", help="steps between checkpoints (default: preset's)")
    start.add_argument("--eval-every", type=bounded_int(0, MAX_STEPS, "a step count"), metavar="N",
                       help="steps between held-out evals (0 = off; default: each stage's preset's)")
    start.add_argument("--sample-every", type=bounded_int(0, MAX_STEPS, "a step count"), metavar="N",
                       help="steps between text samples (0 = off; default: 4 x the preset's eval interval)")
    start.add_argument("--sample-prompts", type=path_arg, metavar="FILE", help="prompts for the samples, one per line")
    determinism = start.add_mutually_exclusive_group()
    determinism.add_argument("--deterministic", dest="deterministic", action="store_true", default=None,
                             help="deterministic kernels: bit-identical resume (default on CPU, off with --cuda)")
    determinism.add_argument("--no-deterministic", dest="deterministic", action="store_false", help="faster kernels, resume within tolerance")
    compiling = start.add_mutually_exclusive_group()
    compiling.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the model (default with --cuda)")
    compiling.add_argument("--no-compile", dest="compile", action="store_false", help="train eagerly")

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="one run in detail (default: the newest)")
    status.add_argument("run", nargs="?")
    status.add_argument("--json", action="store_true")
    wait = sub.add_parser("wait", help="block until a run ends; exit 0 if it completed")
    wait.add_argument("run")
    wait.add_argument("--timeout", type=bounded_float(0, MAX_TIMEOUT_S, "seconds"), metavar="S")
    for name, text in (("stop", "checkpoint and stop a run"), ("pause", "checkpoint and pause a run"),
                       ("resume", "resume a paused, stopped or failed run from its last checkpoint"),
                       ("checkpoint", "write a checkpoint now")):
        sub.add_parser(name, help=text).add_argument("run")
    upload = sub.add_parser("upload", help="upload a run's completed stages to the Hugging Face hub (tritter-upload does it)")
    upload.add_argument("run")
    upload.add_argument("--stage", metavar="PRESET", choices=PRESET_NAMES, help="only this stage (default: every completed stage)")
    events = sub.add_parser("events", help="print the event stream")
    events.add_argument("--since", type=bounded_int(0, MAX_COUNT, "a sequence number"), default=1, metavar="SEQ")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing live events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--kind", type=parse_kinds, metavar="KIND[,KIND]",
                        help=f"only these kinds ({', '.join(EVENT_KINDS)})")
    add_plan_parser(sub)
    extend = sub.add_parser("extend", help="grow a completed run into bigger stages, as the same run")
    extend.add_argument("run")
    extend.add_argument("--end", required=True, choices=PRESET_NAMES, metavar="PRESET", help="the new last stage")
    extend_budget = extend.add_mutually_exclusive_group()
    extend_budget.add_argument("--steps", type=budget_type(parse_steps), metavar="N[,N...]",
                               help="optimizer steps per new stage (default: the run's last stage's)")
    extend_budget.add_argument("--tokens", type=budget_type(parse_tokens), metavar="N[,N...]",
                               help="tokens per new stage instead of --steps (k/M/B)")
    add_tokenizer_parser(sub)
    keygen = sub.add_parser("keygen", help="make a CURVE key pair for a remote client")
    keygen.add_argument("dir", type=Path, help="folder for NAME.key (public) and NAME.key_secret")
    keygen.add_argument("name")
    keygen.add_argument("-f", "--force", action="store_true", help="replace an existing NAME.key pair")
    return parser


# -- formatting -------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _progress(r: RunState) -> str:
    """``120/400 30%``: global step of the run's total, and the share done."""
    share = f" {100 * r.current_step // r.total_steps}%" if r.total_steps else ""
    return f"{r.current_step}/{r.total_steps}{share}"


def queue_status(r: RunState, long: bool = False) -> str:
    """A run's status with its place in tritterd's queue: ``queued #2``, ``held`` (a paused queued run)."""
    if r.status == "queued":
        return f"queued, position {r.queue_position} (priority {r.config.priority})" if long else f"queued #{r.queue_position}"
    if is_held(r):
        return "paused, held in the queue (resume puts it back in its place)" if long else "held"
    return r.status


def format_runs(runs: Sequence[RunState]) -> str:
    """The ``tritterctl runs`` table.  Names are measured in terminal cells and control
    characters escaped (formats/text.py), so no name can shift the columns."""
    if not runs:
        return "no runs yet (start one with: tritterctl start)"
    header = (f"{'RUN':<21} {'NAME':<20} {'STATUS':<11} {'STAGE':<5} {'STEP':>15} {'LOSS':>8} {'PHASE':<7} "
              f"{'TOK/S':>8} {'ETA':>7}  STARTED")
    lines = [header]
    for r in runs:
        lines.append(
            f"{r.run_id:<21} {fit_text(r.run_name, 20)} {queue_status(r):<11} {r.current_stage or '-':<5} "
            f"{_progress(r):>15} {_fmt(r.current_loss):>8} {r.current_phase or '-':<7} "
            f"{r.tokens_per_s:>8.0f} {fmt_duration(eta_seconds(r)):>7}  {_when(r.started)}"
        )
    return "\n".join(lines)


def _budget_text(c: RunConfig) -> str:
    """``200 steps each``, ``100,300 steps`` or ``1B,2B tokens`` (recipe/budget.py)."""
    if c.tokens:
        return ",".join(f"{t / 1e9:g}B" if t >= 10**9 else f"{t / 1e6:g}M" if t >= 10**6 else str(t) for t in c.tokens) + " tokens"
    if c.stage_steps:
        return ",".join(map(str, c.stage_steps)) + " steps"
    return f"{c.steps} steps each"


def format_status(r: RunState) -> str:
    """``tritterctl status``'s text for run ``r``: one labelled line per field (stages, progress, loss, speed,
    checkpoint, ...), user text escaped."""
    c = r.config
    lines = [
        f"run        {r.run_id}  ({r.run_name})",
        f"status     {queue_status(r, long=True)}" + (f": {r.error}" if r.error else ""),
        f"stages     {' -> '.join(c.stages())}, {_budget_text(c)}, seed {c.seed}, "
        f"{'hybrid' if c.hybrid else 'no-hybrid'}, {'cuda' if c.cuda else 'cpu'}, corpus {c.corpus or 'embedded'}",
        f"progress   step {_progress(r)}, stage {r.current_stage or '-'}, phase {r.current_phase or '-'}"
        + (f", {r.step_ms / 1000:.2f} s/step recently, ETA {fmt_duration(eta)}" if (eta := eta_seconds(r)) is not None else ""),
        f"loss       {_fmt(r.current_loss)} (best {_fmt(r.best_loss)} at step {r.best_step or '-'})",
        f"passes     {r.total_forward} forward, {r.total_backward} backward, {r.predicted_steps} predicted",
        f"speed      {r.tokens_per_s:.0f} tokens/s" + (f", MFU {r.mfu:.1%}" if r.mfu is not None else ""),
        f"tokens     {r.run_tokens:,} in the run, {r.tokens:,} in stage {r.current_stage or '-'}",
        *([f"data       {prepare_line(r.prepare)}"] if r.prepare else []),
        f"started    {_when(r.started)}, updated {_when(r.updated)}",
    ]
    if r.last_checkpoint:
        ck = r.last_checkpoint
        lines.append(f"checkpoint step {ck.step} ({ck.stage}) {ck.path}, {ck.bytes / 1e6:.1f} MB")
    for s in r.stages:
        lines.append(
            f"stage {s.index}    {s.stage:<5} {stage_status(r, s):<9} params {s.params:,}  eval loss {_fmt(s.eval_loss_start)} -> "
            f"{_fmt(s.eval_loss_end)}  tokens {s.tokens:,}" + (f"  grown from {s.grown_from}" if s.grown_from else "")
            + (f"  upload {s.upload_status}" + (f": {s.upload_error}" if s.upload_status == "failed" and s.upload_error else "")
               + (f" {s.upload_url}" if s.upload_status == "completed" and s.upload_url else "") if s.upload_status else "")
        )
    lines += status_lines(r)  # periodic eval, alerts
    return "\n".join(printable(line) for line in lines)  # user text (paths, errors): one line each


def format_event(event: AnyEvent) -> str:
    """One line for ``tritterctl events``: seq, local time, run id, kind, then the kind's own summary (losses in
    nats/token, sizes in MB)."""
    head = f"{event.seq:>7} {time.strftime('%H:%M:%S', time.localtime(event.ts))} {event.run_id} {event.kind:<10}"
    if isinstance(event, StepEvent):
        predicted = " predicted" if event.was_predicted else ""
        return (f"{head} step {event.step} loss {event.loss:.4f} gnorm {event.gradient_norm:.3f} lr {event.lr:.2e} "
                f"{event.phase}{predicted} {event.step_time_ms:.0f} ms {event.tokens_per_s:.0f} tok/s"
                + (f" MFU {event.mfu:.1%}" if event.mfu is not None else ""))
    if isinstance(event, RunEvent):
        extra = f" from step {event.resume_step}" if event.resume_step is not None else ""
        return f"{head} {event.status}{extra}" + (f": {event.reason}" if event.reason else "")
    if isinstance(event, StageEvent):
        return (f"{head} {event.stage} {event.status} at step {event.step}, params {event.params:,}, "
                f"eval loss {_fmt(event.eval_loss)}" + (f", grown from {event.grown_from}" if event.grown_from else ""))
    if isinstance(event, PhaseEvent):
        return f"{head} {event.phase} from step {event.step}" + (f" ({event.reason})" if event.reason else "")
    if isinstance(event, CheckpointEvent):
        deleted = " deleted" if event.status == "deleted" else ""
        return f"{head}{deleted} step {event.step} {event.path} {event.bytes / 1e6:.1f} MB ({event.reason})"
    if isinstance(event, PrepareEvent):
        return f"{head} {prepare_line(event)}"
    if isinstance(event, UploadEvent):
        where = f"{event.repo}@{event.revision}" if event.repo else event.revision
        text = f"{head} {event.stage} {event.status} {where}".rstrip()
        if event.attempt:
            text += f" (attempt {event.attempt})"
        if event.status == "completed" and event.url:
            text += f" {event.url}"
        if event.error:
            text += f": {event.error}" + (" - will retry" if event.will_retry else "")
        return text
    return format_monitoring(event, head) or head


# -- commands ---------------------------------------------------------------------------------
def config_from_args(args: argparse.Namespace, remote: bool) -> RunConfig:
    """The RunConfig of ``tritterctl start``'s flags (``remote``: paths are the daemon's and are not checked here).

    Raises UserError (one line) for a missing local ``--corpus``/``--tokenizer``, an invalid config or budget,
    or an unusable Hugging Face repo id; ValueError when ``--sample-prompts`` cannot be read or breaks a bound.
    """
    corpus = None
    if args.corpus is not None:
        if remote:  # a path on the daemon's machine: it checks
            corpus = str(args.corpus)
        elif not args.corpus.exists():
            raise UserError(f"--corpus {args.corpus} does not exist")
        else:
            corpus = str(args.corpus.resolve())
    tokenizer = None
    if args.tokenizer is not None:
        if remote:
            tokenizer = str(args.tokenizer)
        elif not args.tokenizer.exists():
            raise UserError(f"--tokenizer {args.tokenizer} does not exist")
        else:
            tokenizer = str(args.tokenizer.resolve())
    config = RunConfig(
        name=args.name, start=args.start, end=args.end, seed=args.seed, corpus=corpus,
        tokenizer=tokenizer, text_field=args.text_field,
        steps=args.steps[0] if args.steps else 200, stage_steps=args.steps if args.steps and len(args.steps) > 1 else None,
        tokens=args.tokens, batch_tokens=args.batch_tokens, micro_batch=args.micro_batch, lr=args.lr,
        keep_checkpoints=args.keep_checkpoints, priority=args.priority,
        cuda=args.cuda, hybrid=args.hybrid, grad_ckpt_every=args.grad_ckpt_every, nproc=args.nproc,
        upload=args.upload, hf_user=args.hf_user, checkpoint_every=args.checkpoint_every,
        deterministic=args.deterministic, compile=args.compile,
        eval_every=args.eval_every, sample_every=args.sample_every, sample_prompts=read_prompts(args.sample_prompts),
    )
    problem = validate_config(config) or check_budgets(config)
    if problem is None and config.hf_user:  # known now: do not let the upload fail after training
        problem = repo_id_problem(config.hf_user, config.name or default_run_name(config.start, config.end))
    if problem:
        raise UserError(problem)
    return config


async def ask(connection: Connection, request: Request) -> Reply:
    """Send ``request`` on ``connection`` and return the Reply; raises DaemonUnavailable, RequestFailed or
    ProtocolError as ``Connection.request``."""
    return await connection.request(request)


def self_paused(state: RunState) -> bool:
    """Paused by the run itself (a full disk: it says why), not by ``tritterctl pause``."""
    return state.status == "paused" and bool(state.error)


def link_reporter(subscription_ref: list[Subscription]) -> Callable[[str], None]:
    """An ``on_state`` callback: one stderr line when tritterd stops answering, one when it is back.

    ``subscription_ref`` holds the subscription once made (the callback is needed to make it),
    so the lines can say where the stream stands: the last seq printed before the silence, and
    the seq it caught up to once back (the subscription fills the gap from the daemon's log).
    """
    down = False

    def on_state(state: str) -> None:
        nonlocal down
        last = subscription_ref[0].last_seq if subscription_ref else 0
        if state == DISCONNECTED and not down:
            down = True
            print(f"tritterctl: tritterd stopped answering (no heartbeat for {SILENCE_BEATS} s) after seq {last}; "
                  "waiting for it to come back", file=sys.stderr, flush=True)
        elif state == LIVE and down:
            down = False
            print(f"tritterctl: tritterd is back; caught up to seq {last}, no gap, no duplicate", file=sys.stderr, flush=True)

    return on_state


async def wait_for_run(target: Target, connection: Connection, run: str, timeout: float | None) -> int:
    """``tritterctl wait``: block until ``run`` ends, following the bus from the reply's head; print its outcome.

    Returns 0 when it completed, ``EXIT_RUN_FAILED`` (1) when it failed, was stopped or paused itself,
    ``EXIT_TIMEOUT`` (124) after ``timeout`` seconds (None = no limit).  Raises as ``ask``.
    """
    reply = await ask(connection, Status(run=run))
    state = reply.runs[0]
    if state.status not in TERMINAL and not self_paused(state):
        holder: list[Subscription] = []
        subscription = Subscription(target, since=reply.head + 1, on_state=link_reporter(holder))
        holder.append(subscription)

        async def until_done() -> RunState:
            async for event in subscription:
                if isinstance(event, RunEvent) and event.run_id == state.run_id and (
                    event.status in TERMINAL or (event.status == "paused" and event.reason)
                ):
                    break
            return (await ask(connection, Status(run=state.run_id))).runs[0]

        try:
            state = await asyncio.wait_for(until_done(), timeout)
        except asyncio.TimeoutError:
            print(f"tritterctl: run {state.run_id} still {state.status} after {timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        finally:
            await subscription.close()
    if self_paused(state):  # it will not complete by itself: say why, and how to go on
        print(f"{state.run_id} paused itself: {state.error}")
        return EXIT_RUN_FAILED
    print(f"{state.run_id} {state.status}" + (f": {state.error}" if state.error else ""))
    return 0 if state.status == "completed" else EXIT_RUN_FAILED


async def print_events(target: Target, since: int, follow: bool, as_json: bool,
                       kinds: frozenset[str] | None = None) -> int:
    """``tritterctl events``: print events from seq ``since`` (at least 1), one line each (or JSON with ``as_json``),
    only the ``kinds`` given (None = all), to the head or, with ``follow``, forever.  Returns 0.
    """
    holder: list[Subscription] = []
    subscription = Subscription(target, since=max(since, 1), follow=follow, on_state=link_reporter(holder))
    holder.append(subscription)
    try:
        async for event in subscription:
            if kinds is not None and event.kind not in kinds:
                continue
            line = encode_json(event).decode() if as_json else printable(format_event(event))
            print(line, flush=True)
    finally:
        await subscription.close()
    return 0


def keygen(directory: Path, name: str, force: bool = False) -> int:
    """``tritterctl keygen``: write a CURVE key pair ``name.key`` / ``name.key_secret`` (mode 0600) into ``directory``
    (clients/keygen.py) and print how to use it; returns 0.  Raises ValueError (one line) for a bad name or a pair
    that exists without ``force``, OSError when it cannot write.
    """
    public, secret = write_key_pair(directory, name, force)
    print(f"public:  {public}\nsecret:  {secret}")
    print(f"authorize it: copy {public} into the daemon's HOME/keys/authorized/")
    print(f"connect with: --connect tcp://HOST:PORT --server-key server.key --client-key {secret}")
    return 0


async def run_command(args: argparse.Namespace) -> int:
    """Run one daemon subcommand of ``args`` against its target and print the result; returns the exit status
    (0, or ``wait``'s).  Raises UserError, DaemonUnavailable, RequestFailed, ProtocolError, ValueError, OSError.
    """
    target = target_from_args(args)
    # start/extend are answered once the daemon has checked the run's data (up to a minute on a slow disk)
    connection = Connection(target, timeout_s=START_REPLY_TIMEOUT_S if args.command in ("start", "extend") else 5.0)
    try:
        command = args.command
        if command == "start":
            reply = await ask(connection, Start(config=config_from_args(args, target.is_remote)))
            print(reply.run_id)
        elif command == "runs":
            reply = await ask(connection, Runs())
            print(encode_json(reply.runs).decode() if args.json else format_runs(reply.runs))
        elif command == "status":
            reply = await ask(connection, Status(run=args.run))
            print(encode_json(reply.runs[0]).decode() if args.json else format_status(reply.runs[0]))
        elif command == "wait":
            return await wait_for_run(target, connection, args.run, args.timeout)
        elif command == "upload":
            reply = await ask(connection, Upload(run=args.run, stage=args.stage))
            print(f"{reply.run_id}: {reply.message}")
        elif command == "events":
            await ask(connection, Runs())  # fail fast and clearly when the daemon is not there
            return await print_events(target, args.since, args.follow, args.json, args.kind)
        else:
            if command == "extend":
                request: Request = Extend(run=args.run, end=args.end, steps=args.steps, tokens=args.tokens)
            else:
                request = {"stop": Stop, "pause": Pause, "resume": Resume, "checkpoint": Checkpoint}[command](run=args.run)
            reply = await ask(connection, request)
            print(f"{reply.run_id}: {reply.message}")
        return 0
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    """``tritterctl`` command line; returns the exit status: 0, 1 (``wait``: the run will not complete), 2 with one
    line on stderr for any error, 124 (``wait --timeout``), 130 on Ctrl-C; a closed stdout pipe is not an error.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return keygen(args.dir, args.name, args.force)
        if args.command == "tokenizer":  # trains here: no daemon needed
            return run_tokenizer(args)
        if args.command == "plan":  # arithmetic only: no daemon needed
            return run_plan(args)
        return asyncio.run(run_command(args))
    except BrokenPipeError:  # `tritterctl events | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except (UserError, DaemonUnavailable, RequestFailed, ProtocolError, ValueError, OSError) as error:
        # plain words (no [Errno N], no codec internals); a write with no file name names the output folder
        print(f"tritterctl: error: {error_line(error, getattr(args, 'out', None))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
