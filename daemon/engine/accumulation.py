"""Gradient accumulation: one optimizer step over ``accum`` micro-batches on every rank.

The global batch of a step (``recipe/budget.py``: ``BatchPlan``) is sliced by rank
(``distributed.shard``), then into ``accum`` micro-batches of ``micro_batch`` sequences.  Each
micro-batch's mean loss is scaled by ``1 / accum`` before its backward, so the summed gradient is
the gradient of the global batch's mean loss (every micro-batch has the same number of tokens:
the data are contiguous windows, no padding) — the same update as one big batch, as in nanoGPT's
``loss = loss / gradient_accumulation_steps``.  Under DDP the gradient all-reduce runs only on the
last micro-batch (``no_sync`` on the others, torch DDP docs), once per optimizer step.

On CUDA, :func:`probe_micro_batch` picks the largest micro-batch whose forward + backward fits
next to the optimizer and hybrid state (torchtitan and litgpt ask the user; a probe saves a failed
first run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from tritter.daemon.engine.device import autocast

log = logging.getLogger("tritter.accumulation")

# Bytes per parameter the probe keeps free beyond the forward/backward peak it measures: AdamW's two
# fp32 moments (8) plus the hybrid predictor's fp16 history (4), both allocated after the probe.
STATE_BYTES_PER_PARAM = 12
HEADROOM = 0.90  # use at most 90% of the device's memory (allocator fragmentation, NCCL buffers)


def split(x: Tensor, y: Tensor, micro_batch: int) -> list[tuple[Tensor, Tensor]]:
    """This rank's rows ``x``/``y`` (R, T) as consecutive micro-batches of ``micro_batch`` rows.

    Raises ValueError when R is not a multiple of ``micro_batch`` (the BatchPlan guarantees it is).
    """
    rows = x.shape[0]
    if rows % micro_batch:
        raise ValueError(f"{rows} rows do not split into micro-batches of {micro_batch}")
    return [(x[i : i + micro_batch], y[i : i + micro_batch]) for i in range(0, rows, micro_batch)]


def _no_sync(module: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for every micro-batch but the last; nothing for a plain module."""
    no_sync = getattr(module, "no_sync", None)
    return no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()


def forward_backward(module: Any, micro: list[tuple[Tensor, Tensor]], device: torch.device) -> Tensor:
    """Forward and backward of every micro-batch, gradients accumulated into ``.grad``.

    Args: ``module`` the training module (plain, DDP-wrapped or compiled; called as
    ``module(x, labels=y)`` -> mean loss); ``micro`` (x, y) pairs of (B, T) token ids.
    Returns the mean loss over the micro-batches (a detached 0-dim tensor on ``device``: no host
    sync here). The caller clips and steps.
    """
    total = torch.zeros((), device=device)
    scale = 1.0 / len(micro)
    for i, (x, y) in enumerate(micro):
        with _no_sync(module, last=i == len(micro) - 1):
            with autocast(device):
                loss = module(x.to(device, non_blocking=True), labels=y.to(device, non_blocking=True))
            (loss * scale).backward()
        total += loss.detach().float()
    return total * scale


@torch.no_grad()
def forward_only(model: Any, micro: list[tuple[Tensor, Tensor]], device: torch.device) -> Tensor:
    """Mean loss over the micro-batches without gradients (a predicted step); a 0-dim device tensor."""
    total = torch.zeros((), device=device)
    for x, y in micro:
        with autocast(device):
            total += model(x.to(device, non_blocking=True), labels=y.to(device, non_blocking=True)).float()
    return total / len(micro)


def _candidates(rows_per_rank: int, start: int) -> Iterator[int]:
    """Divisors of ``rows_per_rank`` from ``start`` down (the micro-batch must split the rank's rows)."""
    for m in range(min(start, rows_per_rank), 0, -1):
        if rows_per_rank % m == 0:
            yield m


def probe_micro_batch(
    model: torch.nn.Module, seq_len: int, vocab_size: int, rows_per_rank: int, start: int, device: torch.device,
    grad_ckpt_every: int,
) -> int:
    """The largest micro-batch (a divisor of ``rows_per_rank``, at most ``start``) whose forward +
    backward on random tokens peaks below ``HEADROOM`` x device memory minus
    ``STATE_BYTES_PER_PARAM`` x parameters.  On CPU returns ``start`` clipped to a divisor (no probe).

    Args: ``model`` the eager model on ``device`` (grads are cleared afterwards); ``seq_len`` tokens
    per sequence; ``vocab_size`` for the random ids; ``grad_ckpt_every`` the gradient checkpointing
    the stage trains with, set on ``model`` before measuring (a probe without it sizes 500m and 1b
    for twice their activations). Returns at least 1; if even 1 does not fit the run fails later
    with the usual out-of-memory error.
    """
    candidates = list(_candidates(rows_per_rank, start))
    if device.type != "cuda":
        return candidates[0]
    model.set_grad_checkpointing(grad_ckpt_every)  # type: ignore[operator]
    params = sum(p.numel() for p in model.parameters())
    budget = torch.cuda.get_device_properties(device).total_memory * HEADROOM - STATE_BYTES_PER_PARAM * params
    for micro in candidates:
        peak = _peak_bytes(model, micro, seq_len, vocab_size, device)
        if peak is not None and peak <= budget:
            log.info("micro-batch probe: %d sequences peak %.1f GiB of %.1f GiB budget (grad ckpt every %d)",
                     micro, peak / 2**30, budget / 2**30, grad_ckpt_every)
            return micro
        log.info("micro-batch probe: %d sequences do not fit (%s)", micro, "out of memory" if peak is None else f"{peak / 2**30:.1f} GiB")
    return 1


def _peak_bytes(model: torch.nn.Module, micro: int, seq_len: int, vocab_size: int, device: torch.device) -> int | None:
    """Peak CUDA memory of one forward + backward at ``micro`` x ``seq_len``; None when it runs out."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        x = torch.randint(0, vocab_size, (micro, seq_len), device=device)
        with autocast(device):
            loss = model(x, labels=x)
        loss.backward()
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
