"""Where training runs: CPU, or CUDA with bf16 autocast and torch.compile; and how deterministic it is.

Exact resume means different things per device (docs/presets.md, "Determinism"):
- CPU (``--deterministic``, the default there): bit-identical losses after a resume.
- CUDA (non-deterministic by default, for speed): the same data order, RNG streams and state
  are restored, but cuBLAS split-K reductions, atomics in flash-attention's backward and
  inductor's autotuning make the floating-point sums differ run to run; losses agree within
  about 1e-3 relative over the first steps and drift like any two runs of the same recipe.
  ``--deterministic`` on CUDA sets ``CUBLAS_WORKSPACE_CONFIG`` and deterministic algorithms
  (warn-only: flash-attention's backward has no deterministic kernel), at a speed cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from tritter.recipe.planner import gpu_peak_flops, peak_flops_override

log = logging.getLogger("tritter.device")


class NoCudaError(RuntimeError):
    """``--cuda`` cannot be honoured: torch sees no CUDA device, or a rank has no GPU of its own."""

    pass


def pick_device(cuda: bool, local_rank: int = 0) -> torch.device:
    """The torch device this process trains on: CPU unless ``cuda``, else ``cuda:local_rank``
    (made current, TF32 allowed for fp32 matmuls).

    Raises NoCudaError when torch sees no CUDA device or ``local_rank`` >= the visible GPU count.
    """
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoCudaError("--cuda was given but torch sees no CUDA device (is this a CPU-only torch build?)")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if local_rank >= torch.cuda.device_count():
        # Two ranks on one GPU: NCCL refuses it, and it would only halve each rank's memory.
        raise NoCudaError(f"rank {local_rank} has no GPU of its own: {torch.cuda.device_count()} visible (use --nproc ≤ the GPU count)")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    # Matmuls run in bf16 under autocast, where TF32 does nothing; these flags only speed up the
    # matmuls autocast leaves in fp32 (none in this model's forward; the fused optimizer has none).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device


def peak_flops(device: torch.device) -> float | None:
    """One GPU's dense bf16 peak FLOP/s for MFU: ``TRITTER_PEAK_TFLOPS`` (TFLOP/s) when set, else
    the planner's table by the CUDA device name; None on CPU or an unknown GPU (no MFU reported).

    Raises ValueError when ``TRITTER_PEAK_TFLOPS`` is not a positive number.
    """
    override = peak_flops_override(os.environ.get("TRITTER_PEAK_TFLOPS"))
    if override:
        return override
    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device))


def default_deterministic(cuda: bool) -> bool:
    """``--deterministic``'s default: on for CPU runs (bit-identical resume), off on CUDA (speed)."""
    return not cuda


def set_determinism(deterministic: bool) -> None:
    """Turn deterministic algorithms on or off for this process.

    On: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (must be set before the first cuBLAS call; see
    https://docs.nvidia.com/cuda/cublas/#results-reproducibility) and
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (warn-only: some CUDA kernels,
    e.g. flash-attention's backward, have no deterministic variant).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 on CPU, for exact resume."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def compile_wanted(device: torch.device, requested: bool | None = None) -> bool:
    """Whether to torch.compile the training model.

    ``requested`` is the run's ``--compile/--no-compile`` (None = default).  Default: on for
    CUDA, off on CPU.  ``TRITTER_COMPILE=0`` turns it off everywhere, ``TRITTER_COMPILE=1``
    forces it on, CPU included (tests).
    """
    env = os.environ.get("TRITTER_COMPILE")
    if env in ("0", "1"):
        return env == "1"
    if requested is not None:
        return requested
    return device.type == "cuda"


class CompiledModule:
    """A module run through ``torch.compile``, falling back to eager if compilation fails.

    Compile errors surface at the first call, not at ``torch.compile()`` (dynamo traces lazily),
    so the first call is guarded: on any exception from the compiler the module warns once,
    records the reason in ``note``, and re-runs the call eagerly; later calls stay eager.  An
    exception raised by the eager module itself (bad input, out of memory) propagates.

    ``TRITTER_COMPILE_BACKEND`` picks the dynamo backend (default ``inductor``; tests use
    ``aot_eager``, which traces the same graphs without generating kernels).
    Attributes: ``compiled`` (bool, True while the compiled path is in use), ``note`` (str).
    Any other attribute (``no_sync``, ``train``, ``module``…) is the wrapped module's.  Not an
    ``nn.Module`` itself, so parameters and state_dict keys are never seen twice.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.eager = module
        backend = os.environ.get("TRITTER_COMPILE_BACKEND", "inductor")
        self._compiled = torch.compile(module, backend=backend)
        self.compiled = True
        self.note = ""
        self._proven = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.eager, name)

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        if not self.compiled:
            return self.eager(*args, **kwargs)
        if self._proven:
            return self._compiled(*args, **kwargs)
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: train eagerly instead
            from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

            if not isinstance(error, (BackendCompilerFailed, TorchDynamoException)) and _is_eager_error(self.eager, args, kwargs):
                raise
            self.compiled = False
            root = getattr(error, "inner_exception", None) or error.__cause__ or error
            reason = next((line for line in str(root).splitlines() if line.strip()), "unknown compiler error")
            self.note = f"torch.compile failed, training eagerly: {reason[:300]}"
            log.warning("%s", self.note)
            return self.eager(*args, **kwargs)
        self._proven = True
        return out


def _is_eager_error(module: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether the eager module raises too for this call (then the error is not the compiler's)."""
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    except Exception:  # noqa: BLE001
        return True
    return False


def compile_for_training(module: torch.nn.Module, device: torch.device, requested: bool | None = None) -> torch.nn.Module | CompiledModule:
    """``module`` wrapped in ``CompiledModule`` when ``compile_wanted``, else ``module`` itself."""
    if not compile_wanted(device, requested):
        return module
    return CompiledModule(module)


def is_compiled(module: object) -> bool:
    """True when ``module`` is a ``CompiledModule`` still on its compiled path."""
    return isinstance(module, CompiledModule) and module.compiled


def compile_note(module: object) -> str:
    """Why ``module`` fell back to eager ("" when it did not, or was never compiled)."""
    return module.note if isinstance(module, CompiledModule) else ""
