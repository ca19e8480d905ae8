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
so metadata ``content.sha256`` digests every tensor and loading re-checks it:
a truncated or bit-flipped file raises ``CheckpointError`` and the caller can
fall back to the previous checkpoint.

Writes are atomic: a ``.tmp`` sibling is written, fsynced and renamed over the
target, then the directory is fsynced, so a crash leaves either the old file
or the complete new one (plus at most a stray ``.tmp``, which listing ignores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import safetensors.torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

# Resume reads compressed checkpoints (formats/codec.py) transparently.
from tritter.formats.checkpoints import checkpoint_path, is_compressed, list_checkpoint_files
from tritter.formats.codec import CodecError, read_safetensors_bytes, safetensors_metadata
from tritter.recipe.presets import ModelShape
from tritter.formats.files import fsync_dir

FORMAT = "tritter-checkpoint/1"
_MODEL_PREFIXES = ("model.", "lm_head.")
_EXTRA_PREFIX = "extra."


class CheckpointError(Exception):
    """The file is missing, truncated, corrupt or not a tritter checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    bytes: int
    sha256: str  # of the whole file
    step: int | None  # trainer_state["step"], if present


@dataclass
class LoadedCheckpoint:
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


def _content_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _to_cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous()


def _model_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict on CPU with shared tensors stored once; returns (tensors, alias -> stored key)."""
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if ident in seen:
            tied[key] = seen[ident]
        else:
            seen[ident] = key
            tensors[key] = _to_cpu(t)
    return tensors, tied


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    raise TypeError(f"not JSON-serialisable in checkpoint metadata: {type(obj).__name__}")


# --- save / load -----------------------------------------------------------


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
    extra_tensors: dict[str, Tensor] | None = None,
) -> CheckpointInfo:
    """Atomically write model, optimizer, RNG, trainer state and ``extra_tensors`` to ``path``."""
    path = Path(path)
    tensors, tied = _model_tensors(model)
    for name, value in (extra_tensors or {}).items():
        tensors[_EXTRA_PREFIX + name] = _to_cpu(value)
    metadata = {
        "format": FORMAT,
        "tritter": json.dumps(trainer_state, default=_json_default),  # fail before touching disk
        "tied": json.dumps(tied),
    }
    shape = getattr(model, "shape", None)
    if isinstance(shape, ModelShape):
        metadata["model.shape"] = json.dumps(dataclasses.asdict(shape))

    if optimizer is not None:
        opt_state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in opt_state["state"].items():
            for name, value in state.items():
                if isinstance(value, Tensor):
                    tensors[f"optim.{idx}.{name}"] = _to_cpu(value)
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
    metadata["content.sha256"] = _content_digest(tensors)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except SafetensorError as exc:
        tmp.unlink(missing_ok=True)
        raise _as_os_error(exc, tmp) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)

    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    step = trainer_state.get("step")
    return CheckpointInfo(path=path, bytes=path.stat().st_size, sha256=sha256, step=None if step is None else int(step))


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


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read and verify a checkpoint; raises ``CheckpointError`` if it is unusable."""
    path = Path(path)
    try:
        if is_compressed(path):  # written by tritter-compress; may be a delta on an older one
            data = read_safetensors_bytes(path)
            metadata = safetensors_metadata(data)
            tensors = safetensors.torch.load(bytes(data))
        else:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, CodecError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({_one_line(exc)})") from exc

    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (format={metadata.get('format')!r})")
    if _content_digest(tensors) != metadata.get("content.sha256"):
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
