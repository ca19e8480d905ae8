"""How many GPUs this machine offers the daemon's runs, known without importing torch.

The daemon's asyncio process stays light (importing torch there costs seconds and ~300 MB), so
it counts the NVIDIA device nodes (``/dev/nvidia0``, ``/dev/nvidia1``, …) and applies
``CUDA_VISIBLE_DEVICES`` the way the CUDA runtime does: a list of indices or UUIDs, cut at the
first invalid entry; an empty value hides every GPU.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NODE = re.compile(r"^nvidia(\d+)$")


def device_nodes(dev: Path = Path("/dev")) -> int:
    """The number of ``/dev/nvidiaN`` nodes (0 when there is no NVIDIA driver)."""
    try:
        return sum(1 for p in dev.iterdir() if _NODE.match(p.name))
    except OSError:
        return 0


def visible_gpu_count(environ: dict[str, str] | None = None, dev: Path = Path("/dev")) -> int:
    """GPUs a worker started by this daemon would see (>= 0).

    ``environ`` defaults to ``os.environ``; ``dev`` to ``/dev`` (tests pass a fake folder).
    """
    env = os.environ if environ is None else environ
    present = device_nodes(dev)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    count = 0
    for entry in visible.split(","):
        entry = entry.strip()
        if entry.isdigit():
            if int(entry) >= present:
                break
        elif not entry.startswith(("GPU-", "MIG-")):
            break  # the runtime stops at the first entry it cannot parse
        count += 1
    return min(count, present)
