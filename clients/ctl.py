"""``tritterctl``: drive the daemon (start, runs, status, wait, stop, pause, resume, checkpoint, upload, events).

Exit codes: 0 success (for ``wait``: the run completed); 1 the run failed or was stopped
(``wait``); 2 an error (bad flag, daemon not running, unknown run, refused request);
124 ``wait --timeout`` ran out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import zmq.auth

from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.subscription import Subscription
from tritter.clients.target import Target, add_target_arguments, target_from_args
from tritter.protocol.config import PRESET_NAMES, RunConfig, validate_config
from tritter.protocol.control import Checkpoint, Pause, Reply, Request, Resume, Runs, Start, Status, Stop, Upload
from tritter.protocol.events import AnyEvent, CheckpointEvent, PhaseEvent, RunEvent, StageEvent, StepEvent, UploadEvent
from tritter.protocol.state import TERMINAL, RunState
from tritter.protocol.wire import ProtocolError, encode_json

EXIT_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_TIMEOUT = 124


class UserError(Exception):
    """Something to tell the user in one line; exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, not a usage dump
        self.exit(EXIT_ERROR, f"tritterctl: error: {message} (see: tritterctl --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="tritterctl", description="Drive tritterd.", epilog=__doc__.split("\n\n", 1)[1])
    add_target_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    start = sub.add_parser("start", help="start a progressive run; prints its id")
    start.add_argument("--start", default="tiny", metavar="PRESET", help=f"first stage ({', '.join(PRESET_NAMES)}; default tiny)")
    start.add_argument("--end", default="small", metavar="PRESET", help="last stage (default small)")
    start.add_argument("--steps", type=int, default=200, help="optimizer steps per stage (default 200)")
    start.add_argument("--corpus", type=Path, help="text file, folder of text files, or JSONL with a text field")
    start.add_argument("--cuda", action="store_true", help="train on the GPU (bf16)")
    start.add_argument("--upload", action="store_true", help="upload each completed stage to the Hugging Face hub")
    start.add_argument("--hf-user", metavar="USER", help="hub user or organisation for --upload")
    start.add_argument("--name", default="", help="a name for the run (default tritter-START-END)")
    start.add_argument("--seed", type=int, default=0)
    hybrid = start.add_mutually_exclusive_group()
    hybrid.add_argument("--hybrid", dest="hybrid", action="store_true", default=True, help="Warmup/Full/Predict/Correct (default)")
    hybrid.add_argument("--no-hybrid", dest="hybrid", action="store_false", help="train every step fully")
    start.add_argument("--grad-ckpt-every", type=int, metavar="N", help="gradient checkpointing on every N-th block (0 = off)")
    start.add_argument("--nproc", type=int, default=1, metavar="N", help="data-parallel processes")
    start.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default: preset's)")

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="one run in detail (default: the newest)")
    status.add_argument("run", nargs="?")
    status.add_argument("--json", action="store_true")
    wait = sub.add_parser("wait", help="block until a run ends; exit 0 if it completed")
    wait.add_argument("run")
    wait.add_argument("--timeout", type=float, metavar="S")
    for name, text in (("stop", "checkpoint and stop a run"), ("pause", "checkpoint and pause a run"),
                       ("resume", "resume a paused, stopped or failed run from its last checkpoint"),
                       ("checkpoint", "write a checkpoint now")):
        sub.add_parser(name, help=text).add_argument("run")
    upload = sub.add_parser("upload", help="upload a run's completed stages to the Hugging Face hub (tritter-upload does it)")
    upload.add_argument("run")
    upload.add_argument("--stage", metavar="PRESET", choices=PRESET_NAMES, help="only this stage (default: every completed stage)")
    events = sub.add_parser("events", help="print the event stream")
    events.add_argument("--since", type=int, default=1, metavar="SEQ")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing live events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    keygen = sub.add_parser("keygen", help="make a CURVE key pair for a remote client")
    keygen.add_argument("dir", type=Path, help="folder for NAME.key (public) and NAME.key_secret")
    keygen.add_argument("name")
    return parser


# -- formatting -------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def format_runs(runs: Sequence[RunState]) -> str:
    if not runs:
        return "no runs yet (start one with: tritterctl start)"
    header = f"{'RUN':<21} {'NAME':<20} {'STATUS':<9} {'STAGE':<5} {'STEP':>11} {'LOSS':>8} {'PHASE':<7} {'TOK/S':>8}  STARTED"
    lines = [header]
    for r in runs:
        lines.append(
            f"{r.run_id:<21} {r.run_name[:20]:<20} {r.status:<9} {r.current_stage or '-':<5} "
            f"{f'{r.current_step}/{r.total_steps}':>11} {_fmt(r.current_loss):>8} {r.current_phase or '-':<7} "
            f"{r.tokens_per_s:>8.0f}  {_when(r.started)}"
        )
    return "\n".join(lines)


def format_status(r: RunState) -> str:
    c = r.config
    lines = [
        f"run        {r.run_id}  ({r.run_name})",
        f"status     {r.status}" + (f": {r.error}" if r.error else ""),
        f"stages     {' -> '.join(c.stages())}, {c.steps} steps each, seed {c.seed}, "
        f"{'hybrid' if c.hybrid else 'no-hybrid'}, {'cuda' if c.cuda else 'cpu'}, corpus {c.corpus or 'embedded'}",
        f"progress   step {r.current_step}/{r.total_steps}, stage {r.current_stage or '-'}, phase {r.current_phase or '-'}",
        f"loss       {_fmt(r.current_loss)} (best {_fmt(r.best_loss)} at step {r.best_step or '-'})",
        f"passes     {r.total_forward} forward, {r.total_backward} backward, {r.predicted_steps} predicted",
        f"speed      {r.tokens_per_s:.0f} tokens/s",
        f"started    {_when(r.started)}, updated {_when(r.updated)}",
    ]
    if r.last_checkpoint:
        ck = r.last_checkpoint
        lines.append(f"checkpoint step {ck.step} ({ck.stage}) {ck.path}, {ck.bytes / 1e6:.1f} MB")
    for s in r.stages:
        lines.append(
            f"stage {s.index}    {s.stage:<5} {s.status:<9} params {s.params:,}  eval loss {_fmt(s.eval_loss_start)} -> "
            f"{_fmt(s.eval_loss_end)}  tokens {s.tokens:,}" + (f"  grown from {s.grown_from}" if s.grown_from else "")
            + (f"  upload {s.upload_status}" + (f": {s.upload_error}" if s.upload_status == "failed" and s.upload_error else "")
               + (f" {s.upload_url}" if s.upload_status == "completed" and s.upload_url else "") if s.upload_status else "")
        )
    return "\n".join(lines)


def format_event(event: AnyEvent) -> str:
    head = f"{event.seq:>7} {time.strftime('%H:%M:%S', time.localtime(event.ts))} {event.run_id} {event.kind:<10}"
    if isinstance(event, StepEvent):
        predicted = " predicted" if event.was_predicted else ""
        return (f"{head} step {event.step} loss {event.loss:.4f} gnorm {event.gradient_norm:.3f} lr {event.lr:.2e} "
                f"{event.phase}{predicted} {event.step_time_ms:.0f} ms {event.tokens_per_s:.0f} tok/s")
    if isinstance(event, RunEvent):
        extra = f" from step {event.resume_step}" if event.resume_step is not None else ""
        return f"{head} {event.status}{extra}" + (f": {event.reason}" if event.reason else "")
    if isinstance(event, StageEvent):
        return (f"{head} {event.stage} {event.status} at step {event.step}, params {event.params:,}, "
                f"eval loss {_fmt(event.eval_loss)}" + (f", grown from {event.grown_from}" if event.grown_from else ""))
    if isinstance(event, PhaseEvent):
        return f"{head} {event.phase} from step {event.step}" + (f" ({event.reason})" if event.reason else "")
    if isinstance(event, CheckpointEvent):
        return f"{head} step {event.step} {event.path} {event.bytes / 1e6:.1f} MB ({event.reason})"
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
    return head


# -- commands ---------------------------------------------------------------------------------
def config_from_args(args: argparse.Namespace, remote: bool) -> RunConfig:
    corpus = None
    if args.corpus is not None:
        if remote:  # a path on the daemon's machine: it checks
            corpus = str(args.corpus)
        elif not args.corpus.exists():
            raise UserError(f"--corpus {args.corpus} does not exist")
        else:
            corpus = str(args.corpus.resolve())
    config = RunConfig(
        name=args.name, start=args.start, end=args.end, steps=args.steps, seed=args.seed, corpus=corpus,
        cuda=args.cuda, hybrid=args.hybrid, grad_ckpt_every=args.grad_ckpt_every, nproc=args.nproc,
        upload=args.upload, hf_user=args.hf_user, checkpoint_every=args.checkpoint_every,
    )
    problem = validate_config(config)
    if problem:
        raise UserError(problem)
    return config


async def ask(connection: Connection, request: Request) -> Reply:
    return await connection.request(request)


async def wait_for_run(target: Target, connection: Connection, run: str, timeout: float | None) -> int:
    reply = await ask(connection, Status(run=run))
    state = reply.runs[0]
    if state.status not in TERMINAL:
        subscription = Subscription(target, since=reply.head + 1)

        async def until_done() -> RunState:
            async for event in subscription:
                if isinstance(event, RunEvent) and event.run_id == state.run_id and event.status in TERMINAL:
                    break
            return (await ask(connection, Status(run=state.run_id))).runs[0]

        try:
            state = await asyncio.wait_for(until_done(), timeout)
        except asyncio.TimeoutError:
            print(f"tritterctl: run {state.run_id} still {state.status} after {timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        finally:
            await subscription.close()
    print(f"{state.run_id} {state.status}" + (f": {state.error}" if state.error else ""))
    return 0 if state.status == "completed" else EXIT_RUN_FAILED


async def print_events(target: Target, since: int, follow: bool, as_json: bool) -> int:
    subscription = Subscription(target, since=max(since, 1), follow=follow)
    try:
        async for event in subscription:
            line = encode_json(event).decode() if as_json else format_event(event)
            print(line, flush=True)
    finally:
        await subscription.close()
    return 0


def keygen(directory: Path, name: str) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"key name {name!r} may use letters, digits, '.', '_' and '-' only")
    if (directory / f"{name}.key").exists() or (directory / f"{name}.key_secret").exists():
        raise UserError(f"{directory / name}.key already exists; pick another name")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    print(f"public:  {public}\nsecret:  {secret}")
    print(f"authorize it: copy {public} into the daemon's HOME/keys/authorized/")
    print(f"connect with: --connect tcp://HOST:PORT --server-key server.key --client-key {secret}")
    return 0


async def run_command(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    connection = Connection(target)
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
            return await print_events(target, args.since, args.follow, args.json)
        else:
            request = {"stop": Stop, "pause": Pause, "resume": Resume, "checkpoint": Checkpoint}[command](run=args.run)
            reply = await ask(connection, request)
            print(f"{reply.run_id}: {reply.message}")
        return 0
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return keygen(args.dir, args.name)
        return asyncio.run(run_command(args))
    except BrokenPipeError:  # `tritterctl events | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except (UserError, DaemonUnavailable, RequestFailed, ProtocolError, ValueError, OSError) as error:
        print(f"tritterctl: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
