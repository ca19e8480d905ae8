"""Checkpoint retention (--keep-checkpoints): what is kept (latest N, each stage's last, best eval,
delta bases), that deletions follow a durable newer checkpoint and are announced, and that a
resumed run keeps pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tritter.daemon.engine import retention
from tritter.daemon.engine import trainer as trainer_module
from tritter.daemon.engine.retention import Record, prune
from tritter.daemon.engine.trainer import Trainer
from tritter.formats import codec
from tritter.formats.checkpoints import checkpoint_path, checkpoint_step, list_checkpoint_files
from tritter.protocol.config import RunConfig
from tritter.protocol.events import CheckpointEvent
from tritter.recipe.presets import ModelShape, Preset, TrainSettings

MICRO = {
    name: Preset(name, ModelShape(hidden_size=64 * (i + 1), num_layers=1, num_heads=i + 1, intermediate_size=128),
                 TrainSettings(batch_size=2, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=10, checkpoint_every=1000))
    for i, name in enumerate(("tiny", "small"))
}


def steps_on_disk(run_dir: Path) -> list[int]:
    return [checkpoint_step(p) or 0 for p in list_checkpoint_files(run_dir)]


def touch(run_dir: Path, step: int) -> Path:
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * (step + 1))
    return path


def test_keeps_latest_stage_ends_best_eval_and_unknown_files(tmp_path: Path) -> None:
    for step in (3, 5, 10, 15, 20, 25, 30):
        touch(tmp_path, step)
    records = {
        5: Record("tiny"), 10: Record("tiny", final=True, eval_loss=4.0),
        15: Record("small", eval_loss=3.0), 20: Record("small", eval_loss=3.5), 25: Record("small"), 30: Record("small"),
    }  # step 3: a file this run did not record
    gone = prune(tmp_path, records, keep_last=2)
    # latest 2 = 25, 30; stage ends: 10 (tiny), 30 (small); best eval: 15; 25 is still raw, so 20
    # (same stage, the compressor's next delta base) stays too; 3 is unknown.
    assert [d.step for d in gone] == [5]
    assert steps_on_disk(tmp_path) == [3, 10, 15, 20, 25, 30]
    assert gone[0].bytes == 6 and gone[0].record.stage == "tiny" and 5 not in records


def _safetensors(path: Path, step: int) -> None:
    save_file({"w": torch.full((64,), float(step)), "v": torch.arange(64, dtype=torch.float32) * step}, str(path))


def test_a_kept_delta_keeps_its_base_chain(tmp_path: Path) -> None:
    """Real .tzst files: 2 keyframe, 4 delta of 2, 6 keyframe, 8 delta of 6, 10 delta of 8."""
    base_of = {4: 2, 8: 6, 10: 8}
    for step in (2, 4, 6, 8, 10):
        raw = checkpoint_path(tmp_path, step)
        raw.parent.mkdir(parents=True, exist_ok=True)
        _safetensors(raw, step)
        base = base_of.get(step)
        base_path = None if base is None else checkpoint_path(tmp_path, base).with_name(checkpoint_path(tmp_path, base).name + ".tzst")
        codec.compress_file(raw, base=base_path, base_data=None if base_path is None else codec.read_safetensors_bytes(base_path))
        raw.unlink()
    records = {s: Record("tiny") for s in (2, 4, 6, 8, 10)}
    keep_best_4 = {**records, 4: Record("tiny", eval_loss=1.0)}
    assert prune(tmp_path, keep_best_4, keep_last=1) == []  # 4 needs 2; 10 needs 8 and 6
    gone = prune(tmp_path, records, keep_last=1)
    assert sorted(d.step for d in gone) == [2, 4]
    assert steps_on_disk(tmp_path) == [6, 8, 10]
    codec.read_safetensors_bytes(list_checkpoint_files(tmp_path)[-1])  # still decodes


class StopAt:
    def __init__(self, step: int | None) -> None:
        self.step = step
        self.trainer: Trainer | None = None

    def poll(self) -> str | None:
        return "stop" if self.trainer is not None and self.trainer.progress.step == self.step else None

    def wait(self) -> str:
        raise AssertionError("never paused here")


def run(run_dir: Path, cache: Path, stop_at: int | None = None) -> list:
    events: list = []
    controls = StopAt(stop_at)
    config = RunConfig(start="tiny", end="small", steps=6, seed=1, checkpoint_every=2, keep_checkpoints=2, hybrid=False)
    trainer = Trainer("ret", config, run_dir, events.append, controls, cache)
    controls.trainer = trainer
    trainer.run()
    return events


def test_trainer_prunes_after_each_durable_checkpoint_and_across_resume(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "get_preset", lambda name: MICRO[name])
    monkeypatch.setattr(trainer_module, "EVAL_BATCHES", 2)
    cache = tmp_path_factory.mktemp("cache")
    first = run(tmp_path, cache, stop_at=5)  # checkpoints 2, 4, then the stop checkpoint at 5
    second = run(tmp_path, cache)  # resumes from 5: 6 (tiny's last), 8, 10, 12 (small's last)
    events = [e for e in first + second if isinstance(e, CheckpointEvent)]
    saved = [e.step for e in events if e.status == "saved"]
    assert saved == [2, 4, 5, 6, 8, 10, 12]
    deleted = [e for e in events if e.status == "deleted"]
    # At 5: 2 goes (4 stays: 5 is raw and may become a delta of it).  At 8 (small): 4 and 5 go.
    assert [e.step for e in deleted] == [2, 4, 5]
    assert all(e.reason == "retention" and e.bytes > 0 and e.path.startswith("checkpoints/") for e in deleted)
    # Each deletion comes after a newer checkpoint's "saved" event, which is durable by then.
    for e in deleted:
        index = events.index(e)
        assert any(s.status == "saved" and s.step > e.step for s in events[:index])
    # Left: tiny's last (6), the latest two (10, 12; 12 is small's last), and 8, which 10 may still
    # be compressed against (no compressor runs here, so 10 stays raw).
    assert steps_on_disk(tmp_path) == [6, 8, 10, 12]
    assert retention.DEFAULT_KEEP == 3
