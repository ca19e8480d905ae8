"""Background checkpoints: training waits only for the host copy; the file is the snapshot's
state even though training changes the weights meanwhile; one write in flight; failures come back."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tritter.daemon.engine.async_checkpoint import BackgroundWriter, Pending
from tritter.daemon.engine.checkpoint import checkpoint_path, load_checkpoint, snapshot_checkpoint, write_snapshot
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.formats.safetensors_stream import verify_content
from tritter.recipe.presets import get_preset


def _trained() -> tuple[LlamaForCausalLM, torch.optim.AdamW]:
    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).backward()
    opt.step()
    return model, opt


def _pending(path: Path, step: int = 5) -> Pending:
    return Pending(path=path, step=step, stage="tiny", reason="periodic", stage_done=False)


def _wait(writer: BackgroundWriter, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        finished = writer.poll()
        if finished is not None:
            return finished
        time.sleep(0.05)
    raise AssertionError("the background write did not finish")


def test_written_file_is_the_snapshot_not_the_later_weights(tmp_path: Path) -> None:
    model, opt = _trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = snapshot_checkpoint(model, opt, {"step": 5})
    writer = BackgroundWriter()
    path = checkpoint_path(tmp_path, 5)
    writer.submit(_pending(path), snapshot)
    with torch.no_grad():  # training goes on while the file is written
        for p in model.parameters():
            p.add_(1.0)
    finished = _wait(writer)
    writer.close()
    assert finished.error is None and finished.info is not None
    assert finished.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # hashed while writing
    assert finished.info.bytes == path.stat().st_size
    assert verify_content(path) is True
    loaded = load_checkpoint(path)
    for key, value in before.items():
        assert torch.equal(loaded.model_state[key], value), key
    assert loaded.trainer_state == {"step": 5}
    assert writer.poll() is None  # reported once


def test_one_write_in_flight(tmp_path: Path) -> None:
    model, opt = _trained()
    writer = BackgroundWriter()
    writer.submit(_pending(checkpoint_path(tmp_path, 1), 1), snapshot_checkpoint(model, opt, {"step": 1}))
    with pytest.raises(RuntimeError, match="in flight"):
        writer.submit(_pending(checkpoint_path(tmp_path, 2), 2), snapshot_checkpoint(model, opt, {"step": 2}))
    assert writer.wait() is not None
    writer.close()


def test_a_failed_write_comes_back_and_leaves_nothing(tmp_path: Path) -> None:
    model, opt = _trained()
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    writer = BackgroundWriter()
    writer.submit(_pending(checkpoint_path(tmp_path, 3), 3), snapshot_checkpoint(model, opt, {"step": 3}))
    finished = writer.wait()
    writer.close()
    assert finished is not None and finished.info is None and isinstance(finished.error, OSError)


def test_stream_writer_output_is_plain_safetensors(tmp_path: Path) -> None:
    """Any safetensors reader loads the one-pass file: names, dtypes and bytes as saved."""
    model, opt = _trained()
    snapshot = snapshot_checkpoint(model, opt, {"step": 7})
    info = write_snapshot(tmp_path / "x.safetensors", snapshot)
    with safe_open(str(info.path), framework="pt") as f:
        assert set(f.keys()) == set(snapshot.tensors)
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), snapshot.tensors[key]), key
    assert (8 + int.from_bytes(info.path.read_bytes()[:8], "little")) % 8 == 0  # data 8-byte aligned
    raw = bytearray(info.path.read_bytes())
    raw[-3] ^= 0x10  # one flipped bit in the last tensor
    (tmp_path / "y.safetensors").write_bytes(bytes(raw))
    assert verify_content(tmp_path / "y.safetensors") is False


def test_checkpoints_from_before_the_stream_writer_still_load(tmp_path: Path) -> None:
    """Files written by safetensors' save_file with the old ``content.sha256`` digest load and verify."""
    import json

    from safetensors.torch import save_file

    model, opt = _trained()
    snapshot = snapshot_checkpoint(model, opt, {"step": 9})
    h = hashlib.sha256()
    for key in sorted(snapshot.tensors):
        t = snapshot.tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    metadata = dict(snapshot.metadata, **{"content.sha256": h.hexdigest()})
    old = tmp_path / "old.safetensors"
    save_file(snapshot.tensors, str(old), metadata=metadata)
    assert verify_content(old) is True
    assert load_checkpoint(old).trainer_state == {"step": 9}
    metadata["content.sha256"] = "0" * 64
    save_file(snapshot.tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert verify_content(tmp_path / "bad.safetensors") is False
    assert json.loads(metadata["tritter"]) == {"step": 9}
