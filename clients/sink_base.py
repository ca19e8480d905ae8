"""One base for every bus sink (recorder, compressor, uploader, and the ones still to come).

A *sink* is a long-lived client that follows the event bus and turns events into files or
uploads.  Every sink needs the same plumbing, and this module is its one home:

- **one instance per home**: a ``flock`` on ``HOME/<lock_file>``; a second instance waits;
- **a cursor**: the last event seq the sink has fully handled, saved under HOME (atomically,
  durably) so a restart catches up from ``cursor + 1`` and loses nothing;
- **a subscription**: every event from the cursor on, in order, exactly once, across daemon
  restarts (``clients/subscription.py``);
- **signals and shutdown**: SIGTERM/SIGINT stop the sink, whenever they come, and it exits 0:
  while it imports and parses flags it just exits (``clients/sink_signals.py``); from
  ``run_sink`` on, the blocking step in flight finishes, the cursor is saved one last time and
  the sink closes (one save at a time, never two at once);
- **a command line**: ``--home``/``--connect``/``--runs-home``, logging, one-line errors.

How to write a new sink (e.g. a TensorBoard writer)::

    from tritter.clients.sink_signals import stop_quietly_while_starting

    stop_quietly_while_starting(__name__, "tritter-board")  # first: before the slow imports below

    @dataclass(frozen=True)
    class BoardSettings(SinkSettings):          # typed settings, validated in __post_init__
        flush_every: int = 100

    class Board(Sink[BoardSettings]):
        settings_type = BoardSettings           # what Board(layout) gets when given no settings
        name = "tritter-board"                  # program name: logs and messages
        lock_file = "board.lock"                # HOME/board.lock: one writer per home
        cursor_file = "board.cursor"            # HOME/board.cursor: last seq handled
        redo_note = "scalars may be written twice"  # said when the cursor file is unreadable

        async def on_event(self, event: AnyEvent) -> None:   # the one method you must write
            if isinstance(event, StepEvent):
                await finish_in_thread(self.writer.add_scalar, ...)   # file I/O off the loop

        def save_progress(self) -> None:        # optional: make output durable first
            self.writer.flush()
            super().save_progress()             # then the cursor

    def main(argv=None) -> int:
        parser = sink_parser(Board, "Write TensorBoard scalars for every run.")
        parser.add_argument("--flush-every", type=int, default=100)
        args = parser.parse_args(argv)
        return sink_main(Board, args, lambda: BoardSettings(flush_every=args.flush_every))

Rules the base relies on:

- ``on_event`` runs on the asyncio loop: do file I/O through ``finish_in_thread`` (or
  ``finish(<an aiofiles call>)``) so a slow disk never stalls the subscription or the signal
  handlers.  Not bare ``asyncio.to_thread``: a signal cancels the await but not the thread, and
  the shutdown's last save and ``close`` would then run while it still writes.
- A signal during ``on_event`` cancels it: at its next await, or, in ``finish``, once the
  blocking step returned.  The cursor then stays at the previous event, which comes again on
  the next start; if that step already wrote the event, either make writing it again harmless
  or set ``self.cursor = event.seq`` inside the step.
- After ``on_event`` returns, the base sets ``self.cursor = event.seq``; the event counts as
  handled.  Make re-handling an event harmless (a crash between the work and the cursor save
  re-delivers it): decide from the files what is already done.
- ``save_progress`` runs in a worker thread (never concurrently with ``on_event``), at most every
  ``settings.save_interval_s`` after an event, whenever ``save_due`` says so, and once at exit.
- ``start`` runs once under the lock before the subscription (clean up after a crash there);
  ``stop`` runs when the subscription ends (cancel your own tasks), before the last save;
  ``close`` after it (release files and sockets).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from tritter.clients.sink_signals import STOP_SIGNALS, ignore_stop_signals, stop_signals_blocked
from tritter.clients.subscription import Subscription
from tritter.clients.target import Target, add_target_arguments, target_from_args
from tritter.formats.files import load_cursor, save_cursor
from tritter.formats.text import printable_logs
from tritter.protocol.exitcodes import EXIT_ERROR, OneLineParser
from tritter.protocol.events import AnyEvent
from tritter.protocol.home import Layout, resolve_home
from tritter.protocol.oserrors import error_line, home_error_line
from tritter.protocol.wire import ProtocolError

log = logging.getLogger("tritter.sinks")

SAVE_INTERVAL_S = 1.0  # how stale a sink's saved cursor may get while events arrive
LOCK_POLL_S = 0.2  # how often a second instance retries the home's lock (a wait a signal can end)

T = TypeVar("T")


async def finish(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when the caller is cancelled, then let the cancellation through.

    For blocking steps run in a worker thread (``asyncio.to_thread``, ``aiofiles``): cancelling
    the await does not stop the thread, so without this the sink's shutdown (its last save,
    ``close``) would run while the step still writes — two writers on one file.  Returns
    ``work``'s result; raises its exception, or CancelledError after it finished when the caller
    was cancelled meanwhile (a later cancel while waiting is absorbed the same way).
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))  # unlike a plain await, cancelling this leaves ``task`` running
        except asyncio.CancelledError:
            cancelled = True  # wait for the work, then pass the cancellation on
    result = task.result()  # its exception, if it failed: an error is reported even on the way out
    if cancelled:
        raise asyncio.CancelledError
    return result


async def finish_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, waited for to its end even when cancelled (``finish``).

    How a sink runs blocking file I/O: the loop (and its signal handlers) stay responsive, and
    a signal never leaves the step half-done behind the sink's back.  Returns ``fn``'s result,
    raises its exception, or CancelledError once ``fn`` returned when the caller was cancelled.
    """
    return await finish(asyncio.to_thread(fn, *args))


async def hold_lock(layout: Layout, lock_name: str, sink: str) -> int:
    """Take ``HOME/<lock_name>`` (an exclusive ``flock``); while another ``sink`` holds it, wait.

    The wait polls every ``LOCK_POLL_S`` seconds on the loop (a thread blocked in ``flock``
    could not be called off), so a signal ends it at once.  Returns the open file descriptor;
    closing it releases the lock.  Raises OSError when the home cannot be created or the lock
    file opened, CancelledError when cancelled while waiting (the descriptor is closed).
    """
    layout.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.home / lock_name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not waiting:
                    log.warning("another %s is running on %s; waiting for it to exit", sink, layout.home)
                    waiting = True
                await asyncio.sleep(LOCK_POLL_S)
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class SinkSettings:
    """Settings every sink has; a sink with options subclasses this (frozen dataclass).

    ``save_interval_s``: seconds (> 0) between cursor saves while events arrive.
    Subclasses validate their own fields in ``__post_init__`` and raise ValueError with one
    line naming the command-line flag.
    """

    save_interval_s: float = SAVE_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.save_interval_s > 0:
            raise ValueError("the save interval must be > 0 seconds")


SettingsT = TypeVar("SettingsT", bound=SinkSettings)


class Sink(abc.ABC, Generic[SettingsT]):
    """A bus sink: subclass it, set the class attributes, write ``on_event`` (see the module how-to).

    ``layout``: the home whose runs the sink writes; ``settings``: its typed settings (the
    defaults of ``settings_type`` when None); ``source``: the daemon it follows (None when the sink
    is driven by hand, as in unit tests).  The constructor loads the cursor: build a sink only
    while holding its lock (``run_sink`` does).
    """

    name: ClassVar[str] = "tritter-sink"  # program name, for logs and messages
    lock_file: ClassVar[str]  # HOME/<lock_file>: one instance per home
    cursor_file: ClassVar[str | None] = None  # HOME/<cursor_file>; None = the sink saves its own state
    redo_note: ClassVar[str] = "events are handled again"  # what an unreadable cursor means
    settings_type: ClassVar[type[SinkSettings]] = SinkSettings  # built with its defaults when none are given

    def __init__(self, layout: Layout, settings: SettingsT | None = None, source: Target | None = None) -> None:
        self.layout = layout
        self.settings: SettingsT = settings if settings is not None else self.settings_type()  # type: ignore[assignment]
        self.source = source
        self.cursor = self.load_cursor()
        self._saved_cursor = self.cursor
        self._saved_at = time.monotonic()
        self._save_lock = threading.Lock()  # one save at a time, whichever thread calls it

    # -- what a sink writes -------------------------------------------------------------------
    @abc.abstractmethod
    async def on_event(self, event: AnyEvent) -> None:
        """Handle one event (every kind arrives, in seq order); keep file I/O off the loop."""

    async def start(self) -> None:
        """Once, under the lock, before the subscription starts (e.g. sweep crash leftovers)."""

    async def stop(self) -> None:
        """When the subscription ends, before the last save (e.g. cancel the sink's own tasks)."""

    async def close(self) -> None:
        """Last, after the final save (close files and connections)."""

    def on_state(self, state: str) -> None:
        """The subscription went ``live`` (caught up) or ``disconnected``."""
        logging.getLogger(self.name).info("bus: %s", state)

    def describe(self) -> str:
        """What the sink does, for its start-up log line (override to name its settings)."""
        return f"handling events under {self.layout.home}"

    # -- the cursor ---------------------------------------------------------------------------
    @property
    def cursor_path(self) -> Path | None:
        """``HOME/<cursor_file>``, or None for a sink that keeps its cursor in its own state file."""
        return self.layout.home / self.cursor_file if self.cursor_file else None

    def load_cursor(self) -> int:
        """The saved cursor (last seq handled, 0 = none); a sink with its own state file overrides
        this together with ``save_progress``."""
        path = self.cursor_path
        return load_cursor(path, self.redo_note) if path is not None else 0

    def save_progress(self) -> None:
        """Make everything up to ``self.cursor`` durable, then save the cursor (blocking I/O).

        The base writes the cursor file; a sink whose output is buffered flushes/fsyncs it
        first, then calls ``super().save_progress()``.  Raises OSError when the disk refuses.
        """
        path = self.cursor_path
        if path is not None:
            save_cursor(path, self.cursor)

    def save_if_moved(self) -> bool:
        """``save_progress`` when the cursor moved since the last save (blocking); True if it saved.

        Saves never overlap: a second caller (another thread) waits for the save in progress,
        then saves only if the cursor moved again.
        """
        with self._save_lock:
            if self.cursor == self._saved_cursor:
                return False
            cursor = self.cursor
            self.save_progress()
            self._saved_cursor = cursor
            self._saved_at = time.monotonic()
            return True

    def save_due(self, event: AnyEvent) -> bool:
        """Whether to save after ``event``: by default once ``save_interval_s`` has passed."""
        return time.monotonic() - self._saved_at >= self.settings.save_interval_s

    # -- the loop -----------------------------------------------------------------------------
    async def follow(self, subscription: Subscription) -> None:
        """Feed every event of ``subscription`` to ``on_event``; save on schedule and at the end.

        Cancelled (a signal) during a save, it waits for that save to end (``finish_in_thread``)
        before the last one starts: two saves at once would race on the same files.
        """
        try:
            async for event in subscription:
                await self.on_event(event)
                self.cursor = event.seq
                if self.save_due(event):
                    await finish_in_thread(self.save_if_moved)
        finally:
            await self.stop()
            await finish_in_thread(self.save_if_moved)
            await subscription.close()


SinkT = TypeVar("SinkT", bound=Sink[Any])


@contextlib.contextmanager
def cancel_on_signal(task: asyncio.Task[Any], name: str) -> Iterator[Callable[[], bool]]:
    """Cancel ``task`` on the first SIGTERM/SIGINT while the block runs; later ones are only logged.

    Only the first: a second signal (systemd and the daemon both signal a supervised sink)
    must not cut short the shutdown the first one started (the last save, ``close``).  Yields
    a function saying whether a signal came.  On leaving, the loop's handlers are removed and,
    in a sink program, the signals are ignored from then on (``sink_signals``), with the
    signals held back during the swap so none meets the default action (death, status 143).
    Must run on the main thread (the loop's signal handlers need it).
    """
    loop = task.get_loop()
    logger = logging.getLogger(name)
    came: list[int] = []

    def on_signal(signum: int) -> None:
        if came:
            logger.info("%s again: already stopping", signal.Signals(signum).name)
            return
        came.append(signum)
        logger.info("%s: stopping (the step in progress finishes, then the cursor is saved)", signal.Signals(signum).name)
        task.cancel()

    for signum in STOP_SIGNALS:  # replaces sink_signals' exit-at-once handler of the starting phase
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield lambda: bool(came)
    finally:
        with stop_signals_blocked():
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
            ignore_stop_signals()


async def run_sink(kind: type[SinkT], layout: Layout, source: Target, **kwargs: Any) -> None:
    """Run one sink of class ``kind`` on ``layout`` until SIGTERM/SIGINT.

    Takes ``kind.lock_file`` (waiting for another instance), builds ``kind(layout,
    source=source, **kwargs)``, runs ``start``, follows the bus from the saved cursor, and on a
    signal stops, saves and closes.  A signal at any point (waiting for the lock, in ``start``)
    ends it the same way and it returns normally (the program exits 0).  Errors from the
    constructor (ValueError, OSError, ProtocolError) propagate to the caller.
    """
    task = asyncio.current_task()
    assert task is not None, "run_sink runs as a task"
    with cancel_on_signal(task, kind.name) as signalled:  # first thing: a signal in start-up is a stop too
        try:
            lock = await hold_lock(layout, kind.lock_file, kind.name)
            try:
                sink = kind(layout, source=source, **kwargs)
                try:
                    await sink.start()
                    logging.getLogger(kind.name).info("%s; following %s from seq %d", sink.describe(), source.where, sink.cursor + 1)
                    await sink.follow(Subscription(source, since=sink.cursor + 1, on_state=sink.on_state))
                finally:
                    await sink.close()
            finally:
                os.close(lock)
        except asyncio.CancelledError:
            if not signalled():
                raise  # not ours to swallow
            task.uncancel()


def sink_parser(kind: type[Sink[Any]], description: str, runs_home_help: str = "the home whose runs/ to write") -> argparse.ArgumentParser:
    """An argument parser with the options every sink has (``--home``, ``--connect``, keys, ``--runs-home``)."""
    parser = OneLineParser(prog=kind.name, description=description)  # usage errors: one line, exit 2
    add_target_arguments(parser)
    parser.add_argument("--runs-home", metavar="DIR",
                        help=f"with --connect: {runs_home_help} (default: $TRITTER_HOME or ~/.local/share/tritter)")
    return parser


def sink_main(kind: type[Sink[Any]], args: argparse.Namespace, settings: Callable[[], SinkSettings] | None = None,
              prepare: Callable[[], dict[str, Any]] | None = None) -> int:
    """The body of a sink's ``main``: log set-up, target and home from ``args``, run until a signal.

    ``settings`` builds the sink's typed settings (its ValueError becomes the one-line error);
    ``prepare`` returns extra constructor arguments (after the target resolved).  Returns the
    exit status: 0 after a signal, 2 (``EXIT_ERROR``) with one line on stderr for bad flags, a
    refused daemon or an unusable home.
    """
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {kind.name} %(levelname)s %(message)s")
    printable_logs()  # user text in log lines (run names, reasons) shown escaped
    layout = None
    try:
        built = settings() if settings is not None else None
        if args.runs_home is not None and not args.connect:  # it would be ignored: say so, not write elsewhere
            raise ValueError("--runs-home goes with --connect (a remote daemon); "
                             "a sink of a local daemon writes under its --home")
        source = target_from_args(args)
        layout = Layout(source.home or resolve_home(args.runs_home))
        extra = prepare() if prepare is not None else {}
        asyncio.run(run_sink(kind, layout, source, settings=built, **extra))
    except (ProtocolError, OSError, ValueError) as error:
        line = home_error_line(error, layout.home) if layout is not None else error_line(error)  # no [Errno N]
        print(f"{kind.name}: error: {line}", file=sys.stderr)
        return EXIT_ERROR
    return 0
