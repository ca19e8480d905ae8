"""Children that die with the daemon: a kill -9 of tritterd must not leave orphans working on."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``signum`` to this process when its parent exits (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        pass
