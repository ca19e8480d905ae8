"""Where training runs: CPU, or CUDA with bf16 autocast, TF32 matmuls and (optionally) torch.compile."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger("tritter.device")


class NoCudaError(RuntimeError):
    pass


def pick_device(cuda: bool, local_rank: int = 0) -> torch.device:
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoCudaError("--cuda was given but torch sees no CUDA device (is this a CPU-only torch build?)")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    # TF32 for the fp32 parts (optimizer math, norms): ~free speed on Ampere and newer.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 on CPU, for exact resume."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def maybe_compile(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile on CUDA where it helps (long runs); TRITTER_COMPILE=0 turns it off."""
    if device.type != "cuda" or os.environ.get("TRITTER_COMPILE", "1") == "0":
        return model
    try:
        return torch.compile(model)  # type: ignore[return-value]
    except Exception as error:  # an unsupported setup must not stop training: run eager
        log.warning("torch.compile unavailable (%s); training eagerly", error)
        return model
