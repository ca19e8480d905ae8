"""The one line a failed run's event carries (daemon/worker_main._failure_reason): an allocation
failure says how much and which flags change it, bad data speaks for itself, a bug keeps the
exception's name."""

from __future__ import annotations

import pytest
import torch

from tritter.daemon.worker_main import _failure_reason
from tritter.formats.corpus import DataError


def test_a_real_cpu_allocation_failure_names_the_size_and_the_flag() -> None:
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: refused by the allocator on any machine
    reason = _failure_reason(caught.value)
    assert reason.startswith("out of memory: a step needed 1048576.0 GiB"), reason
    assert "--micro-batch" in reason and "RuntimeError" not in reason and "\n" not in reason


def test_a_cuda_out_of_memory_error_gets_the_same_line() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name and message, without a GPU
        pass

    error = OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB")
    assert _failure_reason(error).startswith("out of memory: a step needed 20.00 GiB")


def test_data_errors_speak_for_themselves_and_bugs_keep_their_name() -> None:
    assert _failure_reason(DataError("corpus is empty (no text): /x")) == "corpus is empty (no text): /x"
    assert _failure_reason(KeyError("w")) == "KeyError: 'w'"
    assert _failure_reason(RuntimeError("first line\nsecond")) == "RuntimeError: first line"
