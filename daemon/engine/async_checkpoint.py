"""Checkpoints written in the background, so training waits only for a host copy.

torchtitan's async checkpointing, reduced to what one trainer needs: the loop takes a
``CheckpointSnapshot`` (weights, AdamW state and RNG copied to host memory:
``checkpoint.snapshot_checkpoint``) and hands it to ``BackgroundWriter``, whose one thread
writes, fsyncs and hashes the file (``checkpoint.write_snapshot``) while the next steps train.

Rules that keep crash safety unchanged:
- never two writes in flight: ``submit`` refuses while one is pending (the caller ``wait``s);
- the ``checkpoint`` event is emitted by the training thread, only after the file is durable
  (``poll``/``wait`` return the finished write; emitting from the writer thread would share
  the worker's ZeroMQ socket between threads);
- a write that fails (a full disk) is reported by ``poll``/``wait`` as ``Finished.error``; the
  previous checkpoint is untouched, as with a blocking save.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tritter.daemon.engine.checkpoint import CheckpointInfo, CheckpointSnapshot, write_snapshot


@dataclass(frozen=True)
class Pending:
    """What a background write is for: the file, the step and stage it holds, why it was taken,
    and whether that step closed its stage."""

    path: Path
    step: int
    stage: str
    reason: str
    stage_done: bool


@dataclass(frozen=True)
class Finished:
    """A background write that ended: ``info`` when durable, else the OSError in ``error``."""

    pending: Pending
    info: CheckpointInfo | None
    error: OSError | None


class BackgroundWriter:
    """One checkpoint write at a time, on one background thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._job: tuple[Pending, Future[CheckpointInfo]] | None = None

    @property
    def busy(self) -> bool:
        """True while a submitted write has not been collected by ``poll``/``wait``."""
        return self._job is not None

    def submit(self, pending: Pending, snapshot: CheckpointSnapshot) -> None:
        """Start writing ``snapshot`` to ``pending.path``.  Raises RuntimeError if a write is in flight."""
        if self._job is not None:
            raise RuntimeError("a checkpoint write is already in flight; wait() for it first")
        self._job = (pending, self._pool.submit(write_snapshot, pending.path, snapshot))

    def poll(self) -> Finished | None:
        """The finished write, once, without blocking; None while it runs or when there is none."""
        if self._job is None or not self._job[1].done():
            return None
        return self.wait()

    def wait(self) -> Finished | None:
        """Block until the write in flight ends and return it (None when there is none).

        An OSError from the write is returned in ``Finished.error``; any other exception (a bug)
        propagates.
        """
        if self._job is None:
            return None
        pending, future = self._job
        self._job = None
        try:
            return Finished(pending, future.result(), None)
        except OSError as error:
            return Finished(pending, None, error)

    def close(self) -> None:
        """Finish the write in flight (its result is dropped) and stop the thread."""
        self._pool.shutdown(wait=True)
