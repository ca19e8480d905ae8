"""Plumbing shared by the bus sinks (recorder, compressor, uploader).

Each sink keeps a cursor (the last seq it has fully handled) in a file under HOME and catches
up from there on start; and only one instance of each sink may work on a home at a time, or
the same work would be done twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os

from tritter.protocol.home import Layout

log = logging.getLogger("tritter.sinks")


async def hold_lock(layout: Layout, lock_name: str, sink: str) -> int:
    """Take ``HOME/<lock_name>``; while another ``sink`` holds it, wait (and say so)."""
    layout.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.home / lock_name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("another %s is running on %s; waiting for it to exit", sink, layout.home)
        await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
    return fd
