"""``tritter-tui``: the prompt_toolkit application: one full-screen control, key bindings, a frame clock.

Events are folded into the ``Monitor`` as they arrive (a background task reading the
``Subscription``), but the screen is drawn by a clock at ``FPS`` and only when something
changed: a burst of thousands of catch-up events costs one frame, not thousands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

from prompt_toolkit.application import Application
from prompt_toolkit.application.current import set_app
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.filters import Condition
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import UIContent, UIControl
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Screen, WritePosition
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.subscription import DISCONNECTED, LIVE, Subscription
from tritter.clients.tui.monitor_keys import MONITOR_STYLES, add_monitoring_keys
from tritter.clients.tui.model import Confirm, Monitor, RunsDirSource, ViewState
from tritter.clients.tui.render import Chrome, Line, fit, screen
from tritter.protocol.cli_args import path_arg
from tritter.protocol.control import Checkpoint, Pause, Ping, Request, Resume, Stop
from tritter.clients.target import Target, add_target_arguments, target_from_args
from tritter.protocol.home import Layout as HomeLayout
from tritter.protocol.oserrors import error_line
from tritter.protocol.state import TERMINAL
from tritter.protocol.wire import ProtocolError

FPS = 8
OFFLINE_POLL_S = 1.0
EXIT_ERROR = 2

STYLE = Style.from_dict({
    "title": "reverse bold",
    "header": "bold",
    "selected": "reverse",
    "dim": "#888888",
    "chart": "#5fafff",
    "boundary": "#ffaf00",
    "spark": "#87d787",
    "phase": "#d7afff",
    "statusbar": "reverse",
    "status.ok": "",
    "status.bad": "bg:#aa0000 #ffffff bold noreverse",
    "status.running": "#00d700",
    "status.paused": "#d7d700",
    "status.failed": "#ff5f5f bold",
    "status.stopped": "#afafaf",
    "status.completed": "#5fafff",
    "error": "#ff5f5f",
    "confirm": "bg:#d7d700 #000000 bold",
    "help": "bg:#303030 #ffffff",
    "help.border": "bg:#303030 #ffaf00",
    **MONITOR_STYLES,
})

_REQUESTS: dict[str, Callable[..., Request]] = {"pause": Pause, "resume": Resume, "stop": Stop, "checkpoint": Checkpoint}


class ScreenControl(UIControl):
    """A control that draws whatever ``render(width, height)`` returns: the window's real size, so resizes just work."""

    def __init__(self, render: Callable[[int, int], list[Line]]) -> None:
        self.render = render

    def create_content(self, width: int, height: int) -> UIContent:
        """The content of a ``width`` x ``height`` (cells) window: the lines ``render`` draws for that size, no cursor."""
        lines = self.render(width, height)
        return UIContent(get_line=lambda i: lines[i], line_count=len(lines), show_cursor=False)

    def is_focusable(self) -> bool:
        """True, so the window takes the focus and key bindings never look for a buffer."""
        return True  # lets the window own the focus, so key bindings never look for a buffer


class Tui:
    """The monitor: a view-model, a source feeding it (live bus or run folders) and the app drawing it."""

    def __init__(
        self,
        *,
        layout: HomeLayout | Target | None = None,
        runs_dir: Path | None = None,
        input: Input | None = None,
        output: Output | None = None,
        fps: float = FPS,
    ) -> None:
        if (layout is None) == (runs_dir is None):
            raise ValueError("give exactly one of layout (live) or runs_dir (offline)")
        self.target = Target.local(layout) if isinstance(layout, HomeLayout) else layout
        self.runs_dir = runs_dir
        self.offline = runs_dir is not None
        self.monitor = Monitor()
        self.view = ViewState()
        self.frame_s = 1.0 / fps
        if runs_dir is not None:
            self.source: RunsDirSource | None = RunsDirSource(runs_dir)
            self.source.poll(self.monitor)  # the first read before the first frame: no empty flash
            self.chrome = Chrome(f"offline · {runs_dir}", f"offline · re-reading every {OFFLINE_POLL_S:g} s")
            self.empty = f"no run folders in {runs_dir}"
        else:
            assert self.target is not None
            self.source = None
            self.chrome = Chrome(f"live · {self.target.where}", "connecting…")
            self.empty = "no runs yet (start one with: tritterctl start)"
        self.connection: Connection | None = Connection(self.target) if self.target is not None else None
        self.subscription: Subscription | None = None
        self.stream_error: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drawn: tuple[object, ...] = ()
        self.app: Application[None] = Application(
            layout=Layout(Window(ScreenControl(self.render))),
            key_bindings=self._key_bindings(),
            style=STYLE,
            full_screen=True,
            input=input,
            output=output,
        )
        self.app.ttimeoutlen = 0.05  # Esc closes help at once instead of waiting for a sequence

    # -- drawing -------------------------------------------------------------------------------
    def render(self, width: int, height: int) -> list[Line]:
        """The screen as ``height`` styled lines of ``width`` cells, drawn from the view-model; a drawing error
        becomes one error line instead of an exception (the terminal must survive).
        """
        try:
            return screen(self.monitor, self.view, self.chrome, width, height, offline=self.offline, empty=self.empty)
        except Exception as error:  # a drawing bug must not take the monitor (and the terminal) down
            return [fit([("class:error", f" render error: {error!r}")], width)] + [fit([], width)] * (height - 1)

    def _frame_key(self) -> tuple[object, ...]:
        return (self.monitor.version, self.chrome.connection, self.chrome.connection_ok, int(time.time()))

    async def _clock(self) -> None:
        """Redraw at most FPS times a second, and only when the picture changed (or the clock ticked)."""
        while True:
            await asyncio.sleep(self.frame_s)
            self._update_connection()
            key = self._frame_key()
            if key != self._drawn:
                self._drawn = key
                self.app.invalidate()

    def _update_connection(self) -> None:
        sub = self.subscription
        if self.offline or sub is None:
            return
        if self.stream_error is not None:
            self.chrome.connection, self.chrome.connection_ok = f"event stream stopped: {self.stream_error}", False
        elif sub.state == DISCONNECTED:
            self.chrome.connection, self.chrome.connection_ok = "disconnected — reconnecting", False
        elif sub.state == LIVE and sub.last_seq >= sub.head:
            self.chrome.connection, self.chrome.connection_ok = "● live", True
        elif sub.head:
            self.chrome.connection, self.chrome.connection_ok = f"catching up · seq {sub.last_seq}/{sub.head}", True

    # -- sources -------------------------------------------------------------------------------
    async def _follow(self) -> None:
        assert self.target is not None
        self.subscription = Subscription(self.target, since=1)  # from seq 1: the whole history, then live
        try:
            async for event in self.subscription:
                self.monitor.apply(event)
        except ProtocolError as error:
            self.stream_error = str(error)
        finally:
            await self.subscription.close()

    async def _poll_folders(self) -> None:
        assert self.source is not None
        while True:
            await asyncio.sleep(OFFLINE_POLL_S)
            self.source.poll(self.monitor)

    # -- keys ----------------------------------------------------------------------------------
    def _key_bindings(self) -> KeyBindings:
        kb = KeyBindings()
        confirming = Condition(lambda: self.view.confirm is not None)
        free = ~confirming

        @kb.add("c-c")
        def _quit_now(event: KeyPressEvent) -> None:
            event.app.exit()

        @kb.add("q", filter=free)
        def _quit(event: KeyPressEvent) -> None:
            event.app.exit()

        @kb.add("j", filter=free)
        @kb.add("down", filter=free)
        def _next(event: KeyPressEvent) -> None:
            self.monitor.move(self.view, +1)

        @kb.add("k", filter=free)
        @kb.add("up", filter=free)
        def _previous(event: KeyPressEvent) -> None:
            self.monitor.move(self.view, -1)

        @kb.add("d", filter=free)
        def _detail(event: KeyPressEvent) -> None:
            self.view.detail = not self.view.detail

        @kb.add("?", filter=free)
        def _help(event: KeyPressEvent) -> None:
            self.view.help = not self.view.help

        @kb.add("escape")
        def _escape(event: KeyPressEvent) -> None:
            if self.view.confirm is not None:
                self._cancel()
            else:
                self.view.help = False

        @kb.add("r", filter=free)
        def _refresh(event: KeyPressEvent) -> None:
            self.refresh()

        add_monitoring_keys(kb, free, self)

        for key, op in (("p", "pause"), ("s", "stop"), ("c", "checkpoint")):
            kb.add(key, filter=free)(lambda event, op=op: self.ask(op))

        @kb.add("y", filter=confirming)
        def _yes(event: KeyPressEvent) -> None:
            self.confirm()

        @kb.add("n", filter=confirming)
        @kb.add("<any>", filter=confirming)  # anything but y cancels: a stray key never stops a run
        def _no(event: KeyPressEvent) -> None:
            self._cancel()

        return kb

    def say(self, message: str, error: bool = False) -> None:
        """Show ``message`` in the status bar (red with ``error``) and redraw."""
        self.view.message, self.view.message_is_error = message, error
        self.app.invalidate()

    def refresh(self) -> None:
        """``r``: offline, re-read the run folders now; live, ping the daemon and show its head seq (or why it does
        not answer)."""
        if self.source is not None:
            self.source.poll(self.monitor)
            self.say(f"re-read {len(self.source.folders)} run folder(s)")
        else:
            self.spawn(self._ping())
        self.app.invalidate()

    async def _ping(self) -> None:
        assert self.connection is not None
        try:
            reply = await self.connection.request(Ping())
        except (DaemonUnavailable, RequestFailed, ProtocolError) as error:
            self.say(str(error), error=True)
            return
        behind = max(0, reply.head - self.monitor.last_seq)
        self.say(f"tritterd answers · head seq {reply.head}" + (f" ({behind} events to fold)" if behind else ""))

    def ask(self, op: str) -> None:
        """p / s / c: check what can be asked, then put a y/n prompt in the status bar."""
        key = {"pause": "p", "stop": "s", "checkpoint": "c"}[op]
        if self.offline:
            self.say(f"{key} ({op}) needs a running tritterd; this monitor reads run folders offline "
                     "(run tritter-tui --home DIR)", error=True)
            return
        state = self.monitor.selected(self.view)
        if state is None:
            self.say("no run selected", error=True)
            return
        if op == "pause" and state.status != "running":
            if state.status == "completed":
                self.say(f"{state.run_name} has completed: nothing to pause or resume", error=True)
                return
            op = "resume"  # paused, stopped or failed: p resumes from the last checkpoint
        elif op in ("stop", "checkpoint") and state.status in TERMINAL:
            self.say(f"{state.run_name} is {state.status}: nothing to {op}", error=True)
            return
        verb = {"pause": "Pause", "resume": "Resume", "stop": "Stop", "checkpoint": "Checkpoint"}[op]
        self.view.confirm = Confirm(f"{verb} run {state.run_name} ({state.run_id})?", op, state.run_id)
        self.say("")  # an old reply must not read as the answer to this prompt

    def confirm(self) -> None:
        """``y``: send the request the pending prompt asked about (in a task; the reply shows in the status bar)."""
        pending, self.view.confirm = self.view.confirm, None
        if pending is None:
            return
        self.say(f"{pending.op}: sending…")
        self.spawn(self._send(pending))

    def _cancel(self) -> None:
        pending, self.view.confirm = self.view.confirm, None
        if pending is not None:
            self.say(f"{pending.op}: cancelled")

    async def _send(self, pending: Confirm) -> None:
        assert self.connection is not None
        try:
            reply = await self.connection.request(_REQUESTS[pending.op](run=pending.run_id))
        except (DaemonUnavailable, RequestFailed, ProtocolError) as error:
            self.say(f"{pending.op} failed: {error}", error=True)
            return
        self.say(f"{pending.op}: {reply.message or 'ok'}")

    # -- running -------------------------------------------------------------------------------
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` as a task the monitor keeps a reference to (cancelled by ``aclose``)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Run the monitor until the user quits: the clock and the feed (bus or folder polling) as tasks, then the
        app; always ``aclose`` after."""
        self.spawn(self._clock())
        self.spawn(self._follow() if not self.offline else self._poll_folders())
        try:
            await self.app.run_async()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the subscription, cancel and await the monitor's tasks, close the control connection."""
        if self.subscription is not None:
            await self.subscription.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connection is not None:
            await self.connection.close()


def snapshot(app: Application[Any], width: int, height: int) -> str:
    """The app's layout drawn into a ``width`` x ``height`` screen, as text (tests, docs captures)."""
    screen_ = Screen(initial_width=width)
    with set_app(app):
        app.layout.container.write_to_screen(
            screen_, MouseHandlers(), WritePosition(0, 0, width, height), parent_style="", erase_bg=False, z_index=None
        )
        screen_.draw_all_floats()
    rows = []
    for y in range(height):
        row = screen_.data_buffer[y]
        rows.append("".join(row[x].char for x in range(width)).rstrip())
    return "\n".join(rows)


# -- command line ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, not a usage dump
        """Print ``tritter-tui: error: MESSAGE (see: tritter-tui --help)`` on stderr and exit 2; never returns."""
        self.exit(EXIT_ERROR, f"tritter-tui: error: {message} (see: tritter-tui --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tritter-tui`` argument parser: the target flags (``--home``/``--connect``...) and ``--runs-dir``."""
    parser = _Parser(prog="tritter-tui", description="Watch tritterd's runs live, or read run folders offline.",
                     epilog="keys: j/k or arrows select, d details, r refresh, p pause/resume, s stop, "
                            "c checkpoint, ? help, q quit (see docs/tui.md)")
    add_target_arguments(parser)
    parser.add_argument("--runs-dir", type=path_arg, metavar="DIR",
                        help="read run folders (run.json + metrics.jsonl) without a daemon, e.g. HOME/runs")
    return parser


async def _check_daemon(target: Target) -> str | None:
    connection = Connection(target, timeout_s=3.0)
    try:
        await connection.request(Ping())
    except (DaemonUnavailable, RequestFailed, ProtocolError) as error:
        if target.home is None:
            return str(error)
        return f"{error}; or read its run folders offline: tritter-tui --runs-dir {HomeLayout(target.home).runs}"
    finally:
        await connection.close()
    return None


def _needs_terminal() -> str | None:
    if sys.stdin.isatty() and sys.stdout.isatty():
        return None
    return "needs a terminal (for scripts: tritterctl runs / status / events --follow)"


async def _main(args: argparse.Namespace) -> int:
    if args.runs_dir is not None:
        runs_dir = args.runs_dir.expanduser().absolute()
        if not runs_dir.is_dir():
            return _fail(f"--runs-dir {args.runs_dir} is not a folder")
        if problem := _needs_terminal():
            return _fail(problem)
        tui = Tui(runs_dir=runs_dir)
    else:
        target = target_from_args(args)  # ValueError: bad flags, or a home path too long for ipc
        # Not running at start: say so at once (a monitor of nothing helps no one).  Once it is
        # up, a restart only shows "disconnected — reconnecting" and the monitor recovers.
        if problem := (await _check_daemon(target)) or _needs_terminal():
            return _fail(problem)
        tui = Tui(layout=target)
    await tui.run()
    return 0


def _fail(message: str) -> int:
    print(f"tritter-tui: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """``tritter-tui`` command line; returns the exit status: 0 after quitting, 2 with one line on stderr when the
    daemon is not there, the flags conflict, ``--runs-dir`` is not a folder or there is no terminal, 130 on Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    if args.runs_dir is not None and (args.home is not None or args.connect is not None):
        return _fail("--runs-dir reads run folders offline; give it without --home or --connect")
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError) as error:  # plain words (protocol/oserrors.py), never [Errno N]
        return _fail(error_line(error))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
