"""tritterd's operator options for watching runs: ``--metrics``, ``--on-alert``, ``--with-tensorboard``,
``--stall-factor`` / ``--stall-min-s`` (docs/monitoring.md).

All of them are set on tritterd's own command line (or in its unit file): no client request can
change them, so a remote client can never make the daemon run a command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from tritter.daemon.children import SupervisedChild
from tritter.daemon.metrics import MetricsServer, parse_address
from tritter.daemon.watch import STALL_FACTOR, STALL_MIN_S, AlertHook
from tritter.protocol.cli_args import bounded_float

log = logging.getLogger("tritterd")


@dataclass(frozen=True)
class Options:
    """``metrics``: (host, port) or None (off); ``on_alert``: a shell command or None;
    ``tensorboard``: supervise a ``tritter-tensorboard`` child; stall bounds in (factor, seconds)."""

    metrics: tuple[str, int] | None = None
    on_alert: str | None = None
    tensorboard: bool = False
    stall_factor: float = STALL_FACTOR
    stall_min_s: float = STALL_MIN_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add tritterd's monitoring flags to ``parser``: ``--metrics``, ``--on-alert``, ``--with-tensorboard``,
    ``--stall-factor``, ``--stall-min-s``."""
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (PORT alone: 127.0.0.1; off by default)")
    parser.add_argument("--on-alert", metavar="CMD",
                        help="run CMD (a shell command) for every alert, the alert as JSON on stdin")
    parser.add_argument("--with-tensorboard", action="store_true",
                        help="also supervise a tritter-tensorboard child (event files under HOME/tensorboard)")
    parser.add_argument("--stall-factor", type=bounded_float(1, 1000, "a factor", low_open=True), default=STALL_FACTOR,
                        metavar="K",
                        help=f"alert when a run makes no step for K x its median step time (default {STALL_FACTOR:g}) ...")
    parser.add_argument("--stall-min-s", type=bounded_float(0, 86_400, "seconds", low_open=True), default=STALL_MIN_S,
                        metavar="S",
                        help=f"... and at least S seconds (default {STALL_MIN_S:g})")


def options_from(args: argparse.Namespace) -> Options:
    """The parsed flags as ``Options``; ValueError (one line) for a bad value."""
    if args.on_alert is not None and not args.on_alert.strip():
        raise ValueError("--on-alert needs a command")
    return Options(
        metrics=parse_address(args.metrics) if args.metrics is not None else None,
        on_alert=args.on_alert, tensorboard=args.with_tensorboard,
        stall_factor=args.stall_factor, stall_min_s=args.stall_min_s,
    )


class Running:
    """What ``start`` set up; ``tick`` from the housekeeping cadence, ``stop`` at shutdown."""

    def __init__(self) -> None:
        self.metrics: MetricsServer | None = None
        self.hook: AlertHook | None = None
        self.tensorboard: SupervisedChild | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.metrics is not None:
                self.metrics.refresh()

    async def stop(self) -> None:
        """Stop what ``start`` set up: the tensorboard child first, then the refresh tasks, the alert hook and the
        metrics server."""
        if self.tensorboard is not None:
            await self.tensorboard.stop()  # first: its run() loop must see it is stopping
        for task in self.tasks:
            task.cancel()
        if self.hook is not None:
            await self.hook.close()
        if self.metrics is not None:
            self.metrics.stop()


async def start(daemon: Any, options: Options | None, home: str) -> Running:
    """Set up what ``options`` ask for on a constructed ``Tritterd``; OSError when the metrics
    address cannot be bound."""
    running = Running()
    if options is None:
        return running
    daemon.watch.stall_factor, daemon.watch.stall_min_s = options.stall_factor, options.stall_min_s
    loop = asyncio.get_running_loop()
    if options.metrics is not None:
        running.metrics = MetricsServer(daemon, *options.metrics)
        running.tasks.append(loop.create_task(running._refresh()))
        log.info("serving Prometheus metrics on %s", running.metrics.url)
    if options.on_alert:
        running.hook = daemon.watch.hook = AlertHook(options.on_alert)
        log.info("alerts run: %s", options.on_alert)
    if options.tensorboard:
        running.tensorboard = SupervisedChild("tensorboard", ["-m", "tritter.clients.tensorboard", "--home", home])
        running.tasks.append(loop.create_task(running.tensorboard.run()))
    return running
