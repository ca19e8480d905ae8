"""Data-parallel training (``--nproc N``): the worker runs under torchrun, one process per rank.

DDP over NCCL with ``--cuda``, gloo on CPU.  Rank 0 alone talks to the daemon (events out,
commands in) and writes checkpoints; it broadcasts each command to the other ranks so every
rank stops, pauses or checkpoints at the same step.  Each rank trains on its own slice of
one global batch, so the data position (and exact resume) is the same as with one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from tritter.daemon.worker_protocol import Command, Controls


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job: global ``rank``, ``world`` size (processes) and ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and emits events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains (``world > 1``)."""
        return self.world > 1


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (one process when not under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


# Commands travel over a CPU (gloo) group even when gradients use NCCL: a broadcast there costs
# no device synchronisation, so polling for a command every step never stalls the GPU queue.
_control_group: dist.ProcessGroup | None = None


def init(ranks: Ranks, device: torch.device) -> None:
    """Join the process group torchrun describes (NCCL for CUDA, gloo on CPU); no-op for one process."""
    global _control_group
    if ranks.distributed and not dist.is_initialized():
        # A paused run waits in a collective for rank 0's next command: allow long pauses.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(days=7))
        if device.type == "cuda":
            _control_group = dist.new_group(backend="gloo", timeout=timedelta(days=7))


def shutdown() -> None:
    """Leave the process group (call after every DDP module is freed)."""
    global _control_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


T = TypeVar("T")


def broadcast(ranks: Ranks, value: T) -> T:
    """Rank 0's ``value`` (a command, an error, None), the same on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control_group)  # CPU group: no device sync
    return box[0]


def on_main(ranks: Ranks, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only; every rank returns its result once it is done (a barrier).

    For files all ranks share (exports, checkpoints): one writer, and no rank reads them before
    they exist.  ``work``'s result must be picklable.  If it raises, rank 0 re-raises the error
    and the other ranks raise RuntimeError with its message, so no rank is left waiting.
    """
    if not ranks.distributed:
        return work()
    result: T | None = None
    problem: str | None = None
    error: BaseException | None = None
    if ranks.main:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks know
            error, problem = exc, str(exc) or type(exc).__name__
    result, problem = broadcast(ranks, (result, problem))
    if error is not None:
        raise error
    if problem is not None:
        raise RuntimeError(f"rank 0 failed: {problem}")
    return result  # type: ignore[return-value]


class RankControls:
    """Commands as rank 0 receives them, handed to every rank at the same point of the loop."""

    def __init__(self, ranks: Ranks, inner: Controls | None) -> None:
        self.ranks = ranks
        self.inner = inner  # rank 0's line to the daemon; None on the other ranks

    def poll(self) -> Command | None:
        """Rank 0's pending command (or None), the same on every rank."""
        return broadcast(self.ranks, self.inner.poll() if self.inner else None)

    def wait(self) -> Command:
        """Block until rank 0 receives a command; every rank returns it."""
        command = broadcast(self.ranks, self.inner.wait() if self.inner else None)
        assert command is not None
        return command


def shard(ranks: Ranks, tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch."""
    if not ranks.distributed:
        return tensor
    per_rank = tensor.shape[0] // ranks.world
    return tensor[ranks.rank * per_rank : (ranks.rank + 1) * per_rank]


def mean(ranks: Ranks, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks (the reported loss is the global batch's loss)."""
    if not ranks.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ranks.world


def wrap(ranks: Ranks, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradient buckets as views; ``device_ids`` set on CUDA)
    when ``ranks`` is distributed, else ``model`` itself.  Needs an initialised process group.
    """
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # gradient_as_bucket_view: grads are views into DDP's all-reduce buckets instead of a second
    # copy (saves one gradient's worth of memory: ~3.9 GiB fp32 at 1b; torch DDP docs).
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
