"""Worker processes as the daemon sees them: spawn one per active run, watch it, tell it what to do."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from tritter.daemon.lifetime import set_parent_death_signal
from tritter.daemon.worker_protocol import Command, Outcome
from tritter.protocol.config import RunConfig

log = logging.getLogger("tritterd.workers")


class WorkerProcess:
    """The daemon's handle on one training child (``daemon/worker_main.py``).

    ``watch(on_exit)`` relays the child's stderr and calls ``on_exit(worker, how)`` once when it
    is gone: ``worker`` is this handle (its ``outcome`` is what the child reported in its
    ``exit`` frame, None if it never did), ``how`` one line on how the process ended.
    """

    def __init__(self, run_id: str, process: asyncio.subprocess.Process) -> None:
        self.run_id = run_id
        self.process = process
        self.outcome: Outcome | None = None  # what the worker said it ended with
        self.said_goodbye = asyncio.Event()  # its final frame arrived, so all its events have too
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.exited = asyncio.Event()
        # Commands wait here until the worker's first message: the ROUTER drops what it sends
        # to an identity that has not connected yet (``daemon/worker_protocol.py``).
        self.connected = False
        self.pending: list[Command] = []

    @classmethod
    async def spawn(
        cls, run_id: str, config: RunConfig, run_dir: Path, cache_dir: Path, endpoint: str
    ) -> WorkerProcess:
        """Start the worker of ``run_id`` (``python -m tritter.daemon.worker_main``, under torchrun when
        ``config.nproc`` > 1), connected to the daemon at ``endpoint``, dying with the daemon; returns its handle.
        Raises OSError when the process cannot be started.
        """
        run_dir.mkdir(parents=True, exist_ok=True)
        launcher = [sys.executable]
        if config.nproc > 1:  # data-parallel: torchrun starts one worker per rank
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.nproc}"]
        process = await asyncio.create_subprocess_exec(
            *launcher,
            "-m",
            "tritter.daemon.worker_main",
            "--run-id",
            run_id,
            "--run-dir",
            str(run_dir),
            "--cache-dir",
            str(cache_dir),
            "--endpoint",
            endpoint,
            "--config",
            msgspec.json.encode(config).decode(),
            "--parent-pid",
            str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=set_parent_death_signal,  # torchrun (or the worker) dies with the daemon
        )
        log.info("run %s: worker pid %d started", run_id, process.pid)
        return cls(run_id, process)

    async def watch(self, on_exit: Callable[[WorkerProcess, str], None]) -> None:
        """Relay the worker's stderr into the daemon's until it exits, wait (at most 2 s) for its ``exit`` frame,
        set ``exited`` and call ``on_exit(self, describe_exit(code))``.
        """
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            print(line, file=sys.stderr, flush=True)  # the worker's log, inline with the daemon's
        code = await self.process.wait()
        # The exit frame travels after the worker's last events; give it a moment to land so
        # a run that just completed is not mistaken for a crash.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.said_goodbye.wait(), timeout=2.0)
        self.exited.set()
        on_exit(self, self.describe_exit(code))

    def describe_exit(self, code: int) -> str:
        """One line for exit status ``code``: killed by a signal (negative code), a non-zero code with its last
        error line, or a plain exit."""
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"worker killed by {name}"
        if code != 0:
            errors = [line for line in self.stderr_tail if "Error" in line or "error" in line or " ERROR " in line]
            detail = f": {_error_text(errors[-1])}" if errors else ""
            return f"worker exited with code {code}{detail}"
        return "worker exited"

    def goodbye(self, outcome: Outcome | None) -> None:
        """The child's ``exit`` frame arrived with ``outcome`` (None: a word this daemon does not know)."""
        self.outcome = outcome
        self.said_goodbye.set()

    def kill(self) -> None:
        """SIGKILL the worker process (torchrun, when it launched the ranks) if it is still running."""
        if self.process.returncode is None:
            self.process.kill()


_LOG_ERROR = re.compile(r"^.*? worker\[[^\]]*\] ERROR (?:training failed: )?")


def _error_text(line: str) -> str:
    """The message of a worker's error line: its log prefix (time, worker tag, level) dropped,
    so the daemon's "worker exited" line reads like the run's own reason."""
    return _LOG_ERROR.sub("", line.strip(), count=1)
