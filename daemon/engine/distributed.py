"""Data-parallel training (``--nproc N``): the worker runs under torchrun, one process per rank.

DDP over NCCL with ``--cuda``, gloo on CPU.  Rank 0 alone talks to the daemon (events out,
commands in) and writes checkpoints; it broadcasts each command to the other ranks so every
rank stops, pauses or checkpoints at the same step.  Each rank trains on its own slice of
one global batch, so the data position (and exact resume) is the same as with one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (one process when not under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(ranks: Ranks, device: torch.device) -> None:
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_command(ranks: Ranks, command: str | None) -> str | None:
    """Rank 0's command (or None), the same on every rank."""
    if not ranks.distributed:
        return command
    box = [command]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
