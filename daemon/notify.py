"""systemd's notify protocol (sd_notify) without libsystemd: a datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tritterd.notify")


class Notifier:
    """sd_notify(3) for ``Type=notify`` + ``WatchdogSec``: READY, STATUS, WATCHDOG, STOPPING.

    Every send is one non-blocking datagram; ``dropped`` counts the ones the manager's full
    queue refused (logged at the first and every 100th).
    """

    def __init__(self) -> None:
        self.dropped = 0
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watchdog_for_us and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether systemd gave a ``$NOTIFY_SOCKET`` (else every send does nothing)."""
        return self.address is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` as one ``KEY=VALUE`` per line datagram to ``$NOTIFY_SOCKET`` (``@`` = abstract namespace).

        Never blocks and never raises: a full queue counts in ``dropped`` (logged), other OSErrors are logged at debug.
        """
        if not self.address:
            return
        address = self.address
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        # Non-blocking: this runs in tritterd's event loop, and a reader that stalls (its queue
        # holds net.unix.max_dgram_qlen = 10 datagrams) must never stall control and catch-up.
        # A dropped notification costs little: STATUS is resent every few seconds, and a
        # manager that misses WATCHDOG=1 pings is the one that is stuck.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            try:
                sock.connect(address)
                sock.send("\n".join(fields).encode())
            except BlockingIOError:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("systemd notify socket %s is full; dropped %s (%d dropped so far)",
                                self.address, fields[0], self.dropped)
            except OSError as error:  # the manager went away; nothing useful to do about it
                log.debug("sd_notify to %s failed: %s", self.address, error)

    def ready(self, status: str) -> None:
        """``READY=1`` with ``status`` and ``MAINPID``: start-up is complete."""
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """``STATUS=status``: the one-line state systemctl shows."""
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the keep-alive ping (every ``watchdog_interval_s``, half of ``WatchdogSec``)."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """``STOPPING=1``: shutdown has begun (running runs are being checkpointed)."""
        self.send("STOPPING=1", "STATUS=checkpointing running runs and stopping")
