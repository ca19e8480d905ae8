"""Long-running helper processes tritterd keeps alive (the recorder), restarted when they die."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tritter.daemon.lifetime import set_parent_death_signal

log = logging.getLogger("tritterd.children")

MAX_BACKOFF_S = 30.0

# The recorder the daemon supervises, started by *module name* as ``python -m``: a separate
# process, never an import, so the daemon depends on no client code (docs/architecture.md).
RECORDER_MODULE = "tritter.clients.record"



class SupervisedChild:
    """A helper process (``python ARGV``, e.g. the recorder) the daemon keeps alive; it gets SIGTERM when the daemon dies."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False

    async def run(self) -> None:
        """Run the child until shutdown, restarting it whenever it exits: after 0.5 s, doubling up to
        ``MAX_BACKOFF_S`` (30 s) while it keeps crashing, back to 0.5 s after a run of over 60 s.
        Returns once ``begin_shutdown``/``stop`` was called and the child exited; OSError if it cannot be spawned.
        """
        backoff = 0.5
        while not self._stopping:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM),  # ends cleanly with us
            )
            log.info("%s started (pid %d)", self.name, self.process.pid)
            started = asyncio.get_running_loop().time()
            code = await self.process.wait()
            if self._stopping:  # shutdown has begun: it ended with us (or on our word), once
                log.info("%s exited with code %s during shutdown", self.name, code)
                return
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 0.5  # it ran fine for a while: this is a fresh failure, not a crash loop
            log.warning("%s exited with code %s; restarting in %.1f s", self.name, code, backoff)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        if self._stopping:
            log.info("%s not restarted: tritterd is shutting down", self.name)

    def begin_shutdown(self) -> None:
        """From now on an exit is final: no restart (the child keeps running until ``stop``)."""
        self._stopping = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to finish (SIGTERM: the recorder flushes), kill it after ``timeout_s``."""
        self._stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except asyncio.TimeoutError:
            process.kill()


def recorder_child(home: str) -> SupervisedChild:
    """The supervised ``tritter-record`` for ``home`` (a path), restarted with backoff if it dies."""
    return SupervisedChild("recorder", ["-m", RECORDER_MODULE, "--home", home])
