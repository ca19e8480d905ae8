"""The training worker: one child process per active run, started and supervised by tritterd.

It trains with ``Trainer`` and talks to the daemon over one DEALER socket (identity = run id):
events go up, then the outcome; commands come down (``daemon/worker_protocol.py`` defines
every frame, command and outcome).  It dies with the
daemon (PR_SET_PDEATHSIG), so a ``kill -9`` of tritterd never leaves an orphan training on.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import zmq

from tritter.formats.text import printable_logs
from tritter.daemon.engine.distributed import RankControls, Ranks, from_environment
from tritter.daemon.lifetime import set_parent_death_signal
from tritter.daemon.worker_protocol import (
    Command,
    Controls,
    Outcome,
    decode_command,
    event_message,
    exit_message,
    ready_message,
)
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AnyEvent, RunEvent
from tritter.protocol.wire import encode

def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when our parent dies; exit(1) at once when ``parent_pid`` is already gone."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class SocketControls:
    """Commands from the daemon, plus SIGTERM (a stop from the service manager) as ``shutdown``."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._terminated = False
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which shuts us down in order
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a write error (EFBIG), not death

    def _on_term(self, *_: object) -> None:
        self._terminated = True

    def _read(self, timeout_ms: int) -> Command | None:
        if self._terminated:
            return Command.SHUTDOWN
        if self._sock.poll(timeout_ms, zmq.POLLIN):
            return decode_command(self._sock.recv())
        return None

    def poll(self) -> Command | None:
        """A pending command, or None (never blocks)."""
        return self._read(0)

    def wait(self) -> Command:
        """Block until a command arrives (SIGTERM counts as ``shutdown``)."""
        while True:
            command = self._read(500)
            if command:
                return command


def main(argv: list[str] | None = None) -> int:
    """The worker process (``python -m tritter.daemon.worker_main``): train one run, talking to the daemon.

    Rank 0 sends events and its final ``exit`` frame (its Outcome) on a DEALER socket to ``--endpoint``, and
    takes commands from it; other ranks follow rank 0.  Returns 0, or 1 after a training error (reported as a
    ``run failed`` event first); bad arguments exit 2 through argparse.
    """
    parser = argparse.ArgumentParser(prog="tritter-worker")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--config", required=True, help="the RunConfig as JSON")
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    ranks = from_environment()
    if ranks.distributed:  # under torchrun, which itself dies with the daemon
        die_with_parent(os.getppid())
    else:
        die_with_parent(args.parent_pid)
    rank_tag = f"/{ranks.rank}" if ranks.distributed else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker[{args.run_id}{rank_tag}] %(levelname)s %(message)s"
    )
    printable_logs()  # user text in log lines (run names, corpus paths) shown escaped
    config = msgspec.json.decode(args.config, type=RunConfig)
    if not ranks.main:  # only rank 0 talks to the daemon; the others follow its commands
        train(args, config, ranks, lambda event: None, RankControls(ranks, None))
        return 0

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, args.run_id.encode())
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop an event; the daemon reads fast and the log is the truth
    sock.setsockopt(zmq.LINGER, 30_000)  # deliver the last events before exiting
    sock.connect(args.endpoint)
    sock.send_multipart(ready_message())  # commands held by the daemon until now come after this

    def emit(event: AnyEvent) -> None:
        sock.send_multipart(event_message(encode(event)))

    outcome = Outcome.FAILED
    try:
        controls: Controls = SocketControls(sock)
        if ranks.distributed:
            controls = RankControls(ranks, controls)
        outcome = train(args, config, ranks, emit, controls)
        return 0
    except Exception as error:  # report why, then exit non-zero: the daemon marks the run failed
        reason = _failure_reason(error)
        if _is_data_error(error) or _out_of_memory(error):  # the user's data or flags: one line, as the reason
            logging.error("training failed: %s", reason)
        else:  # a bug or the environment: the traceback is for whoever debugs it
            logging.exception("training failed")
        emit(RunEvent(run_id=args.run_id, status="failed", reason=reason))
        return 1
    finally:
        sock.send_multipart(exit_message(outcome))
        sock.close()
        ctx.term()


def _is_data_error(error: Exception) -> bool:
    """Whether ``error`` is about the user's data (corpus, tokenizer), not a bug."""
    from tritter.formats.corpus import DataError

    return isinstance(error, DataError)


_CPU_OOM = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_CUDA_OOM = re.compile(r"Tried to allocate ([\d.]+ [KMGT]iB)")


def _out_of_memory(error: Exception) -> str | None:
    """One line for an allocation failure (CPU or CUDA), naming the size and the flags that
    change it; None when ``error`` is not one."""
    text = str(error)
    if match := _CPU_OOM.search(text):
        size = f"{int(match.group(1)) / 2**30:.1f} GiB"
    elif type(error).__name__ == "OutOfMemoryError" and (match := _CUDA_OOM.search(text)):
        size = match.group(1)
    else:
        return None
    return (f"out of memory: a step needed {size} more than the device had; lower --micro-batch "
            "(or --grad-ckpt-every 1); `tritterctl plan` shows each stage's peak")


def _failure_reason(error: Exception) -> str:
    """One line for the ``failed`` event: bad data (DataError) speaks for itself, an allocation
    failure says what to change; anything else is a bug or an environment problem, so it keeps
    the exception's name."""
    if oom := _out_of_memory(error):
        return oom
    text = str(error) if _is_data_error(error) else f"{type(error).__name__}: {error}"
    return (text.splitlines() or [""])[0][:500]


def train(
    args: argparse.Namespace, config: RunConfig, ranks: Ranks, emit: Callable[[AnyEvent], None], controls: Controls
) -> Outcome:
    """Run the trainer on this rank; return its outcome (completed, stopped, shutdown)."""
    import torch

    from tritter.daemon.engine import distributed
    from tritter.daemon.engine.device import default_deterministic, pick_device, set_determinism
    from tritter.daemon.engine.trainer import EndRun, Trainer

    deterministic = config.deterministic if config.deterministic is not None else default_deterministic(config.cuda)
    set_determinism(deterministic)
    device = pick_device(config.cuda, ranks.local_rank)
    distributed.init(ranks, device)
    trainer = None
    try:
        try:
            trainer = Trainer(args.run_id, config, args.run_dir, emit, controls, args.cache_dir, device, ranks=ranks)
        except EndRun as end:  # stopped or shut down while the corpus was being prepared
            return end.outcome
        return trainer.run()
    finally:
        # DDP's reducer must be freed while its process group still exists: freed after
        # destroy_process_group, its gloo destructor deadlocks and the worker never exits.
        del trainer
        gc.collect()
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
