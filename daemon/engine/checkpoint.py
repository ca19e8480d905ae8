"""Single-file training checkpoints (safetensors).

One file holds everything needed to resume bit-identically:

* model weights under their ``state_dict`` keys (``model.*``, ``lm_head.*``);
  a tied weight is stored once and its alias listed in metadata ``tied``
  (safetensors refuses shared tensors; HF's own files drop ``lm_head`` too);
* AdamW state flattened to ``optim.{param_index}.{exp_avg|exp_avg_sq|step}``,
  with ``param_groups`` as JSON in metadata ``optim.param_groups``;
* RNG: the torch CPU generator as uint8 tensor ``rng.torch`` (plus
  ``rng.cuda.{i}`` when CUDA is in use); python ``random`` and numpy global
  states as JSON in metadata ``rng.python`` / ``rng.numpy``;
* the caller's trainer state as JSON in metadata ``tritter``, and the model
  shape in ``model.shape``;
* optional caller tensors (e.g. the hybrid predictor's update history) under
  ``extra.{name}``, returned by ``load_checkpoint`` in ``LoadedCheckpoint.extra``.

safetensors validates the header and file length, but not the tensor bytes,
so metadata ``content.xxh3_128`` digests every tensor and loading re-checks it
(files written before it carry ``content.sha256``, still checked): a truncated or
bit-flipped file raises ``CheckpointError`` and the caller can fall back to the
previous checkpoint.

Writes are atomic and one-pass (``formats/safetensors_stream.py``): a hidden ``.tmp``
sibling is written while its SHA-256 is computed, fsynced and renamed over the target,
then the directory is fsynced, so a crash leaves either the old file or the complete new
one (plus at most a stray ``.tmp``, which listing ignores).  ``snapshot_checkpoint`` +
``write_snapshot`` split a save into the part training waits for (a host copy) and the
part a background thread does (``daemon/engine/async_checkpoint.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import safetensors.torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

# Resume reads compressed checkpoints (formats/codec.py) transparently.
from tritter.formats.checkpoints import checkpoint_path, list_checkpoint_files
from tritter.formats.sniff import is_tzst_file
from tritter.formats.codec import CodecError, read_safetensors_bytes, read_tensors, safetensors_metadata
from tritter.recipe.presets import ModelShape
from tritter.formats.safetensors_stream import DIGEST_KEY, Blob, content_digest, verify_content, write_safetensors

FORMAT = "tritter-checkpoint/1"
_MODEL_PREFIXES = ("model.", "lm_head.")
_EXTRA_PREFIX = "extra."


class CheckpointError(Exception):
    """The file is missing, truncated, corrupt or not a tritter checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A saved checkpoint file: its ``path``, size in ``bytes``, hex ``sha256`` of the whole file, and the
    optimizer ``step`` it holds (None if unrecorded)."""

    path: Path
    bytes: int
    sha256: str  # of the whole file
    step: int | None  # trainer_state["step"], if present


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: model tensors (CPU, tied aliases restored), optimizer and trainer state,
    the RNG states for ``restore_rng``, the saved model's shape (when recorded) and any extra tensors.
    """

    model_state: dict[str, Tensor]  # CPU tensors; tied aliases restored, ready for load_state_dict
    optimizer_state: dict | None  # ready for optimizer.load_state_dict
    trainer_state: dict
    rng: dict  # for restore_rng
    shape: ModelShape | None = None  # shape of the saved model, when it had one
    extra: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # save_checkpoint(extra_tensors=...)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, one per step, oldest first: raw ``.safetensors`` or, once the
    compressor sink has replaced them, ``.safetensors.tzst`` (temp files ignored)."""
    return list_checkpoint_files(Path(run_dir))


# --- RNG -------------------------------------------------------------------


def capture_rng() -> dict:
    """The RNG states of this process: torch CPU (ByteTensor), Python ``random``, numpy's legacy global
    generator, and per-device CUDA states (only when CUDA is already initialised, else ``[]``).
    """
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": [],
    }
    # Only if CUDA is already in use: querying would otherwise initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    """Set the RNG states captured by ``capture_rng`` (CUDA states only for devices that exist).

    Raises KeyError/ValueError/TypeError when ``rng`` lacks a field or a state has the wrong form.
    """
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    cuda_states = rng.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for i, state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)


def _numpy_state_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


# --- helpers ---------------------------------------------------------------


def _model_tensors(model: nn.Module, copy: Callable[[str, Tensor], Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict on CPU with shared tensors stored once; returns (tensors, alias -> stored key).

    ``copy(key, tensor)`` makes each stored tensor (``HostBuffers.copy``).
    """
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if ident in seen:
            tied[key] = seen[ident]
        else:
            seen[ident] = key
            tensors[key] = copy(key, t)
    return tensors, tied


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    raise TypeError(f"not JSON-serialisable in checkpoint metadata: {type(obj).__name__}")


# --- save / load -----------------------------------------------------------


# safetensors dtype names (https://github.com/huggingface/safetensors, "Format").
_ST_DTYPE = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


@dataclass
class CheckpointSnapshot:
    """Everything a checkpoint file holds, copied to host memory so training can go on.

    ``tensors``: name → CPU tensor that nothing else references (a private copy, pinned when it
    came from a GPU); ``metadata``: the safetensors metadata (str → str); ``step``: the global
    optimizer step (or None).  Written by ``write_snapshot``, possibly in another thread.
    """

    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    step: int | None

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (the file is this plus a header of a few KB)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _bytes(t: Tensor) -> np.ndarray:
    """A CPU tensor's memory as a flat uint8 numpy array (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


class HostBuffers:
    """Host tensors reused from one snapshot to the next, by checkpoint key.

    Fresh memory costs page faults (and, for pinned memory, a slow registration), often more
    than the copy itself; reusing last time's buffers makes a snapshot one memcpy per tensor.
    A buffer may be reused only once the write that read it has finished: the trainer finishes
    the write in flight before taking the next snapshot.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, Tensor] = {}

    def copy(self, key: str, t: Tensor) -> Tensor:
        """``t`` copied into the buffer for ``key`` (allocated, pinned if ``t`` is on a GPU, when
        missing or of another shape or dtype); a CUDA copy is asynchronous until synchronised."""
        t = t.detach()
        buf = self._by_key.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.device.type == "cuda")
            self._by_key[key] = buf
        if t.device.type == "cuda":
            buf.copy_(t, non_blocking=True)
        elif t.numel():
            # A plain memcpy (numpy, GIL released): torch's copy_ wakes its intra-op thread pool
            # for each tensor, which costs more than the copy on a busy machine.
            np.copyto(_bytes(buf), _bytes(t.contiguous()))
        return buf


def snapshot_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
    extra_tensors: dict[str, Tensor] | None = None,
    buffers: HostBuffers | None = None,
) -> CheckpointSnapshot:
    """Copy model weights, AdamW state, RNG states, ``trainer_state`` and ``extra_tensors`` to host memory.

    This is the only part of a checkpoint the training loop waits for (one device → host copy,
    like torchtitan's async checkpointing); ``write_snapshot`` does the rest.  ``buffers``
    reuses host memory across snapshots (see ``HostBuffers``; default: fresh memory).  Raises
    TypeError when ``trainer_state`` is not JSON-serialisable (before anything is copied).
    """
    metadata = {
        "format": FORMAT,
        "tritter": json.dumps(trainer_state, default=_json_default),  # fail before copying anything
    }
    on_gpu = any(p.device.type == "cuda" for p in model.parameters())
    host = buffers or HostBuffers()
    tensors, tied = _model_tensors(model, host.copy)
    metadata["tied"] = json.dumps(tied)
    for name, value in (extra_tensors or {}).items():
        tensors[_EXTRA_PREFIX + name] = host.copy(_EXTRA_PREFIX + name, value)
    shape = getattr(model, "shape", None)
    if isinstance(shape, ModelShape):
        metadata["model.shape"] = json.dumps(dataclasses.asdict(shape))
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in opt_state["state"].items():
            for name, value in state.items():
                if isinstance(value, Tensor):
                    tensors[f"optim.{idx}.{name}"] = host.copy(f"optim.{idx}.{name}", value)
                else:
                    scalars.setdefault(str(idx), {})[name] = value
        metadata["optim.param_groups"] = json.dumps(opt_state["param_groups"], default=_json_default)
        metadata["optim.scalars"] = json.dumps(scalars, default=_json_default)
    rng = capture_rng()
    tensors["rng.torch"] = rng["torch"]
    for i, state in enumerate(rng["cuda"]):
        tensors[f"rng.cuda.{i}"] = state
    metadata["rng.python"] = json.dumps(rng["python"])
    metadata["rng.numpy"] = json.dumps(_numpy_state_json(rng["numpy"]))
    if on_gpu:
        torch.cuda.synchronize()  # the pinned copies are complete before another thread reads them
    step = trainer_state.get("step")
    return CheckpointSnapshot(tensors=tensors, metadata=metadata, step=None if step is None else int(step))


def _blob(name: str, t: Tensor) -> Blob:
    flat = t.reshape(-1)
    data = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
    return Blob(name, _ST_DTYPE[t.dtype], tuple(t.shape), data)


def write_snapshot(path: Path, snapshot: CheckpointSnapshot) -> CheckpointInfo:
    """Write ``snapshot`` to ``path`` atomically and durably, in one streaming pass that also
    computes the file's SHA-256 (formats/safetensors_stream.py).  Safe to call from a background
    thread.  Raises OSError from the file system (ENOSPC on a full disk); ``path`` is then untouched.
    """
    path = Path(path)
    blobs = [_blob(name, t) for name, t in snapshot.tensors.items()]
    written = write_safetensors(path, blobs, snapshot.metadata)
    return CheckpointInfo(path=path, bytes=written.bytes, sha256=written.sha256, step=snapshot.step)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
    extra_tensors: dict[str, Tensor] | None = None,
) -> CheckpointInfo:
    """Atomically write model, optimizer, RNG, trainer state and ``extra_tensors`` to ``path`` (blocking).

    Same as ``write_snapshot(path, snapshot_checkpoint(...))``; see those for errors.
    """
    return write_snapshot(path, snapshot_checkpoint(model, optimizer, trainer_state, extra_tensors))


def _as_os_error(exc: SafetensorError, path: Path) -> Exception:
    """safetensors reports I/O failures as text ("... (os error 28)"): give callers the errno."""
    match = re.search(r"os error (\d+)", str(exc))
    if match is None:
        return exc
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(path))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


_TORCH_DTYPE = {name: dtype for dtype, name in _ST_DTYPE.items()}


def _load_compressed(path: Path) -> tuple[dict[str, str], dict[str, Tensor], bool | None]:
    """(metadata, tensors on CPU, content digest matches) of a ``.safetensors.tzst`` checkpoint.

    Each tensor is decoded straight into its own buffer (``formats.codec.read_tensors``, frames
    checked by xxh3 as they decode) and wrapped without a copy; an older checkpoint without
    ``content.xxh3_128`` goes through the whole-file bytes.  Raises CodecError.
    """
    metadata, arrays = read_tensors(path)
    if DIGEST_KEY not in metadata or any(d not in _TORCH_DTYPE for d, _, _ in arrays.values()):
        data = read_safetensors_bytes(path)
        return safetensors_metadata(data), safetensors.torch.load(bytes(data)), verify_content(data)
    intact = content_digest(Blob(k, d, s, memoryview(a)) for k, (d, s, a) in arrays.items()) == metadata[DIGEST_KEY]
    tensors = {k: torch.from_numpy(a).view(_TORCH_DTYPE[d]).reshape(s) for k, (d, s, a) in arrays.items()}
    return metadata, tensors, intact


def load_checkpoint(path: Path, device: torch.device | str | None = None) -> LoadedCheckpoint:
    """Read and verify a checkpoint; raises ``CheckpointError`` if it is unusable.

    ``device``: where model and optimizer tensors are created (default CPU).  An uncompressed
    file is read through a memory map straight onto that device, so N data-parallel ranks on
    one node share the page cache instead of holding N host copies; RNG states stay on CPU.
    """
    path = Path(path)
    target = str(device) if device is not None else "cpu"
    try:
        if is_tzst_file(path):  # by content (formats/sniff.py): written by tritter-compress; may be a delta
            metadata, tensors, intact = _load_compressed(path)
            if target != "cpu":
                tensors = {k: v if k.startswith("rng.") else v.to(target) for k, v in tensors.items()}
        else:
            intact = verify_content(path)
            with safe_open(str(path), framework="pt", device=target) as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            tensors.update({k: v.cpu() for k, v in tensors.items() if k.startswith("rng.")})
    except (SafetensorError, CodecError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({_one_line(exc)})") from exc

    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (format={metadata.get('format')!r})")
    if not intact:  # False: the bytes changed; None: no digest at all (not written by tritter)
        raise CheckpointError(f"{path}: content checksum mismatch (corrupt checkpoint)")

    try:
        model_state = {k: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIXES)}
        for alias, key in json.loads(metadata["tied"]).items():
            model_state[alias] = model_state[key]

        optimizer_state = None
        if "optim.param_groups" in metadata:
            param_groups = json.loads(metadata["optim.param_groups"])
            for group in param_groups:
                if isinstance(group.get("betas"), list):
                    group["betas"] = tuple(group["betas"])
            state: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, idx, name = key.split(".", 2)
                    state.setdefault(int(idx), {})[name] = value
            for idx, values in json.loads(metadata["optim.scalars"]).items():
                state.setdefault(int(idx), {}).update(values)
            optimizer_state = {"state": dict(sorted(state.items())), "param_groups": param_groups}

        cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        rng = {
            "torch": tensors["rng.torch"],
            "cuda": [tensors[k] for k in cuda_keys],
            "python": json.loads(metadata["rng.python"]),
            "numpy": json.loads(metadata["rng.numpy"]),
        }
        trainer_state = json.loads(metadata["tritter"])
        shape = ModelShape(**json.loads(metadata["model.shape"])) if "model.shape" in metadata else None
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({_one_line(exc)})") from exc

    extra = {k[len(_EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_EXTRA_PREFIX)}
    return LoadedCheckpoint(
        model_state=model_state,
        optimizer_state=optimizer_state,
        trainer_state=trainer_state,
        rng=rng,
        shape=shape,
        extra=extra,
    )
