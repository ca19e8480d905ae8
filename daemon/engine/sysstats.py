"""Resource use of the training worker: process CPU and memory (psutil), GPUs (NVML via nvidia-ml-py).

``SystemSampler.sample(step)`` returns a ``SystemEvent``; on a machine without an NVIDIA driver
(or for a CPU run) ``gpus`` is empty.  NVML is the library nvidia-smi and nvitop read, so the
numbers match what those show.  Every NVML call that fails leaves its field None rather than
failing the run: monitoring must never stop training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psutil

from tritter.protocol.events import GpuStats, SystemEvent

log = logging.getLogger("tritter.sysstats")


def _nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None when there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception as error:  # ImportError, NVMLError_LibraryNotFound, driver errors: no GPU stats
        log.info("no GPU statistics: %s", error)
        return None


def _read(call: Any, *args: Any) -> Any | None:
    try:
        return call(*args)
    except Exception:  # NVMLError_NotSupported (power on some boards), transient errors
        return None


class SystemSampler:
    """Samples this process and the run's GPUs.

    ``gpu_ids``: the run's devices as NVML identifiers: UUID strings (``"GPU-…"``, what
    ``torch.cuda.get_device_properties(i).uuid`` gives, robust to ``CUDA_VISIBLE_DEVICES``) or
    NVML indices (int).  Empty for a CPU run.
    """

    def __init__(self, gpu_ids: Sequence[str | int] = ()) -> None:
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement window
        self.nvml = _nvml() if gpu_ids else None
        self.handles: list[tuple[int, Any]] = []
        if self.nvml is not None:
            for position, ident in enumerate(gpu_ids):
                if isinstance(ident, str):
                    handle = _read(self.nvml.nvmlDeviceGetHandleByUUID, ident)
                else:
                    handle = _read(self.nvml.nvmlDeviceGetHandleByIndex, ident)
                if handle is not None:
                    self.handles.append((position, handle))

    def sample(self, step: int) -> SystemEvent:
        """Current figures: CPU % since the previous sample (100 = one core), RSS and host memory in bytes."""
        memory = psutil.virtual_memory()
        with self.process.oneshot():
            cpu = self.process.cpu_percent(None)
            rss = self.process.memory_info().rss
        return SystemEvent(
            step=step, cpu_percent=cpu, rss_bytes=rss,
            host_memory_used_bytes=memory.total - memory.available, host_memory_total_bytes=memory.total,
            gpus=[self._gpu(position, handle) for position, handle in self.handles],
        )

    def _gpu(self, position: int, handle: Any) -> GpuStats:
        nv = self.nvml
        assert nv is not None
        name = _read(nv.nvmlDeviceGetName, handle)
        util = _read(nv.nvmlDeviceGetUtilizationRates, handle)
        mem = _read(nv.nvmlDeviceGetMemoryInfo, handle)
        temp = _read(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
        power = _read(nv.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        return GpuStats(
            index=position,
            name=name.decode() if isinstance(name, bytes) else (name or ""),
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,
        )

    def close(self) -> None:
        """Shut NVML down (errors ignored), once; later samples carry no GPU figures."""
        if self.nvml is not None:
            _read(self.nvml.nvmlShutdown)
            self.nvml = None
