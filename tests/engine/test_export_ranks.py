"""One writer for a stage's export: rank 0 exports while the other ranks wait (2 real gloo ranks),
and even two unsynchronised processes exporting the same stage never fail."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tritter.daemon.engine import distributed
from tritter.daemon.engine.distributed import Ranks
from tritter.daemon.engine.export import StageCard, export_stage
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.formats.export_layout import EXPORT_FILES, export_dir, export_is_complete
from tritter.formats.files import atomic_dir
from tritter.recipe.presets import get_preset

ROUNDS = 15
SWAPS = 400


def _card() -> StageCard:
    return StageCard(run_id="20260101-000000-abcd", run_name="ranks", stage="tiny", step=1, stage_steps=1)


def _model() -> LlamaForCausalLM:
    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    return model


def _rank_main(rank: int, store: str, run_dir: str, out: mp.Queue) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        ranks = Ranks(rank=rank, world=2, local_rank=rank)
        model = _model()
        for _ in range(ROUNDS):
            folder = distributed.on_main(ranks, lambda: export_stage(model, "tiny", Path(run_dir), _card()))
            # After the barrier every rank sees a complete export, on every round.
            assert export_is_complete(folder), f"rank {rank} saw an incomplete export"
        out.put((rank, "ok"))
    except BaseException as error:  # noqa: BLE001 - reported to the test process
        out.put((rank, f"{type(error).__name__}: {error}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(target, args_per_proc: list[tuple]) -> list:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for args in args_per_proc]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sorted(results)


def test_rank0_exports_while_the_other_rank_waits(tmp_path: Path) -> None:
    store = tmp_path / "store"
    results = _run(_rank_main, [(r, str(store), str(tmp_path)) for r in range(2)])
    assert results == [(0, "ok"), (1, "ok")]
    folder = export_dir(tmp_path, "tiny")
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    leftovers = [p.name for p in folder.parent.iterdir() if p.name != "tiny"]
    assert leftovers == []


def _swapper(target: str, out: mp.Queue) -> None:
    try:
        for i in range(SWAPS):
            with atomic_dir(Path(target)) as tmp:
                (tmp / "config.json").write_text(f"{os.getpid()} {i}")
        out.put((os.getpid(), "ok"))
    except BaseException as error:  # noqa: BLE001
        out.put((os.getpid(), f"{type(error).__name__}: {error}"))


def test_two_processes_replacing_one_folder_never_fail(tmp_path: Path) -> None:
    """The folder swap under every export (atomic_dir): without its lock this fails within a few
    hundred concurrent swaps (ENOTEMPTY / ENOENT from the move-aside-then-rename)."""
    target = tmp_path / "export" / "tiny"
    results = _run(_swapper, [(str(target),), (str(target),)])
    assert [r[1] for r in results] == ["ok", "ok"], results
    assert [p.name for p in target.iterdir()] == ["config.json"]
