"""Slots: how many runs train at once (``tritterd --slots N``), and which queued run starts next.

Two pools, one per kind of device: CPU runs share the CPU slots, ``--cuda`` runs the GPU slots.
By default there is one CPU slot and one GPU slot per visible GPU (``daemon/gpus.py``);
``--slots N`` sets both pools to N.  A run takes ``--nproc`` slots of its pool (one per rank); a
run that needs more slots than its pool has takes the whole pool (it runs alone) rather than
waiting forever.  A run holds its slots while it has a worker process, paused ones included (a
paused worker still holds the model in memory).  The queue itself is folded state
(``protocol.state.queue_order``); this module only counts slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tritter.protocol.config import RunConfig
from tritter.protocol.state import RunState, queue_order


@dataclass(frozen=True)
class SlotPolicy:
    """Slots per pool: ``cpu`` for CPU runs, ``cuda`` for ``--cuda`` runs (each at least 1)."""

    cpu: int = 1
    cuda: int = 1

    @classmethod
    def from_flag(cls, slots: int | None, gpus: int) -> SlotPolicy:
        """``--slots N`` (both pools N) or the default: 1 CPU slot, one per GPU (at least 1).

        Raises ValueError when ``slots`` is below 1.
        """
        if slots is not None:
            if slots < 1:
                raise ValueError(f"--slots must be at least 1, got {slots}")
            return cls(cpu=slots, cuda=slots)
        return cls(cpu=1, cuda=max(1, gpus))

    def pool(self, config: RunConfig) -> str:
        """The pool a run takes slots from: ``"cuda"`` for a ``--cuda`` run, else ``"cpu"``."""
        return "cuda" if config.cuda else "cpu"

    def capacity(self, pool: str) -> int:
        """Slots of ``pool`` (``"cuda"``, else the CPU pool)."""
        return self.cuda if pool == "cuda" else self.cpu

    def need(self, config: RunConfig) -> int:
        """Slots a run takes: one per rank, at most its whole pool."""
        return min(max(1, config.nproc), self.capacity(self.pool(config)))

    def free(self, pool: str, holding: Iterable[RunConfig]) -> int:
        """Free slots of ``pool`` while the runs with ``holding`` configs have workers."""
        return self.capacity(pool) - sum(self.need(c) for c in holding if self.pool(c) == pool)

    def startable(self, runs: Mapping[str, RunState], holding: Iterable[str]) -> list[str]:
        """Queued runs that can start now, in queue order; a run that does not fit blocks the
        ones behind it in its pool (no overtaking, so a big run is never starved)."""
        configs = [runs[r].config for r in holding if r in runs]
        free = {pool: self.free(pool, configs) for pool in ("cpu", "cuda")}
        blocked: set[str] = set()
        chosen = []
        for state in queue_order(runs.values()):
            pool = self.pool(state.config)
            if pool in blocked:
                continue
            need = self.need(state.config)
            if need > free[pool]:
                blocked.add(pool)
                continue
            free[pool] -= need
            chosen.append(state.run_id)
        return chosen

    def fits_now(self, config: RunConfig, runs: Mapping[str, RunState], holding: Iterable[str]) -> bool:
        """Whether a new run can start at once: its pool has no queued run and enough free slots."""
        pool = self.pool(config)
        if any(self.pool(r.config) == pool for r in queue_order(runs.values())):
            return False
        configs = [runs[r].config for r in holding if r in runs]
        return self.need(config) <= self.free(pool, configs)
