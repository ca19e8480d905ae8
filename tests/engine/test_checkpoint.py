"""Checkpoints: round trip, bit-identical resume, corruption detection, atomic writes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tritter.daemon.engine import checkpoint as ckpt
from tritter.formats import safetensors_stream
from tritter.daemon.engine.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.recipe.presets import get_preset


def new_run(seed: int) -> tuple[LlamaForCausalLM, torch.optim.Optimizer]:
    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


def train_step(model: LlamaForCausalLM, opt: torch.optim.Optimizer) -> float:
    """One step whose batch depends on all three global RNGs, so resuming must restore them."""
    ids = torch.randint(0, 8192, (4, 33))
    ids[:, 0] = random.randrange(8192)
    ids[:, 1] = int(np.random.randint(8192))
    loss = model(ids[:, :-1], labels=ids[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return loss.item()


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, LlamaForCausalLM, torch.optim.Optimizer]:
    seed_all(0)
    model, opt = new_run(0)
    for _ in range(2):
        train_step(model, opt)
    path = checkpoint_path(tmp_path, 2)
    save_checkpoint(path, model, opt, {"step": 2, "stage": "tiny", "losses": [1.5, 2.25]})
    return path, model, opt


def test_round_trip(tmp_path: Path) -> None:
    seed_all(0)
    model, opt = new_run(0)
    for _ in range(2):
        train_step(model, opt)
    path = checkpoint_path(tmp_path, 2)
    rng_before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    info = save_checkpoint(path, model, opt, {"step": 2, "stage": "tiny"})

    assert path == tmp_path / "checkpoints" / "step-00000002.safetensors"
    assert info.path == path and info.step == 2 and info.bytes == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["tritter"] == '{"step": 2, "stage": "tiny"}'
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: stored once
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.0.step", "rng.torch"} <= keys

    loaded = load_checkpoint(path)
    assert set(loaded.model_state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model_state[key], value), key
    assert loaded.trainer_state == {"step": 2, "stage": "tiny"}
    assert loaded.shape == model.shape
    want = opt.state_dict()
    assert loaded.optimizer_state["param_groups"] == want["param_groups"]
    for idx, state in want["state"].items():
        for name, value in state.items():
            assert torch.equal(loaded.optimizer_state["state"][idx][name], value), (idx, name)
    assert torch.equal(loaded.rng["torch"], rng_before[0])
    seed_all(5)
    restore_rng(loaded.rng)
    assert random.getstate() == rng_before[1]
    assert np.array_equal(np.random.get_state()[1], rng_before[2])

    fresh = LlamaForCausalLM(model.shape)
    fresh.load_state_dict(loaded.model_state, strict=True)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    seed_all(0)
    model, opt = new_run(0)
    straight = [train_step(model, opt) for _ in range(6)]
    final = {k: v.clone() for k, v in model.state_dict().items()}

    seed_all(0)
    model, opt = new_run(0)
    resumed = [train_step(model, opt) for _ in range(3)]
    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, model, opt, {"step": 3})
    del model, opt

    seed_all(1234)  # a fresh process: different RNG, different init
    model, opt = new_run(99)
    loaded = load_checkpoint(path)
    model.load_state_dict(loaded.model_state)
    opt.load_state_dict(loaded.optimizer_state)
    restore_rng(loaded.rng)
    resumed += [train_step(model, opt) for _ in range(3)]

    assert resumed == straight
    for key, value in model.state_dict().items():
        assert torch.equal(value, final[key]), key


@pytest.mark.parametrize("keep", [0, 7, 100, "header", "half", -1])
def test_truncated_file_raises(saved, keep) -> None:
    path = saved[0]
    data = path.read_bytes()
    header_len = 8 + int.from_bytes(data[:8], "little")
    cut = {"header": header_len, "half": len(data) // 2}.get(keep, keep)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_flipped_byte_raises(saved) -> None:
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10  # inside tensor data: safetensors itself cannot notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_foreign_and_missing_files_raise(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_failed_write_leaves_no_partial_file(saved, monkeypatch) -> None:
    path, model, opt = saved
    good = path.read_bytes()

    def broken_chunks(header, blobs):
        yield memoryview(b"partial")  # part of the file reaches the disk, then the write fails
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_stream, "_chunks", broken_chunks)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, {"step": 2})  # overwrite attempt
    with pytest.raises(OSError):
        save_checkpoint(checkpoint_path(path.parent.parent, 3), model, opt, {"step": 3})  # fresh path

    assert path.read_bytes() == good  # previous checkpoint untouched
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .tmp, no step 3
    assert load_checkpoint(path).trainer_state["step"] == 2


def test_unserialisable_trainer_state_fails_before_writing(tmp_path: Path) -> None:
    model, opt = new_run(0)
    path = checkpoint_path(tmp_path, 1)
    with pytest.raises(TypeError):
        save_checkpoint(path, model, opt, {"step": 1, "bad": object()})
    assert not path.parent.exists() or not any(path.parent.iterdir())


def test_list_checkpoints(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path) == []
    model, _ = new_run(0)
    for step in (100, 25, 7):
        save_checkpoint(checkpoint_path(tmp_path, step), model, None, {"step": step})
    (tmp_path / "checkpoints" / "step-00000200.tmp").write_bytes(b"x")
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000007.safetensors",
        "step-00000025.safetensors",
        "step-00000100.safetensors",
    ]
    assert load_checkpoint(list_checkpoints(tmp_path)[0]).optimizer_state is None


def test_flush_behind_syncs_while_writing_and_a_sync_error_aborts(tmp_path: Path, monkeypatch) -> None:
    blobs = [safetensors_stream.Blob(f"t{i}", "F32", (1 << 18,), memoryview(np.full(1 << 18, i, np.float32)).cast("B"))
             for i in range(6)]  # 6 MiB
    monkeypatch.setattr(safetensors_stream, "FLUSH_BEHIND", 1 << 20)
    monkeypatch.setattr(safetensors_stream, "_CHUNK", 1 << 20)
    synced: list[int] = []
    real = safetensors_stream.os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(safetensors_stream.os, "fdatasync", counting)
    path = tmp_path / "x.safetensors"
    written = safetensors_stream.write_safetensors(path, blobs, {"k": "v"})
    assert len(synced) >= 2  # the disk gets the file while it is still being written
    assert written.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert safetensors_stream.verify_content(path) is True

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(safetensors_stream.os, "fdatasync", failing)
    other = tmp_path / "y.safetensors"
    with pytest.raises(OSError, match="Input/output"):
        safetensors_stream.write_safetensors(other, blobs, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # no partial file, no temp
