"""The monitor end to end: a real tritterd, the real app driven through a pipe, the rendered screen read back.

The app runs in-process (prompt_toolkit pipe input, DummyOutput); ``snapshot`` draws its real
layout into an 80x24 screen, which is what the assertions read.  Every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import Daemon, ctl
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import PipeInput
from prompt_toolkit.output import DummyOutput
from tui_stream import stream, write_run_folder

from tritter.clients.tui.app import Tui, main, snapshot
from tritter.clients.tui.render import KEYS
from tritter.protocol.events import StepEvent
from tritter.protocol.home import Layout

W, H = 80, 24


def screen_of(tui: Tui) -> str:
    return snapshot(tui.app, W, H)


async def until(tui: Tui, predicate: Callable[[], bool], what: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; screen:\n{screen_of(tui)}")
        await asyncio.sleep(0.05)


async def press(tui: Tui, inp: PipeInput, keys: str, predicate: Callable[[], bool], what: str, timeout: float = 5) -> str:
    inp.send_text(keys)
    await until(tui, predicate, what, timeout)
    return screen_of(tui)


@contextlib.asynccontextmanager
async def running(**kwargs: object) -> AsyncIterator[tuple[Tui, PipeInput]]:
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        tui = Tui(input=inp, output=DummyOutput(), **kwargs)  # type: ignore[arg-type]
        task = asyncio.ensure_future(tui.run())
        try:
            yield tui, inp
            inp.send_text("q")
            await asyncio.wait_for(task, 10)  # q quits, and run() cleans up after itself
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def test_live_monitor(daemon: Daemon, home: Path) -> None:
    daemon.start()
    run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "8", "--checkpoint-every", "4").stdout.strip()

    async def scenario() -> None:
        async with running(layout=Layout(home)) as (tui, inp):
            await until(tui, lambda: "tritter-tiny-tiny" in screen_of(tui), "the run in the list", 20)
            first = screen_of(tui).splitlines()
            assert first[1].split() == ["NAME", "STATUS", "STAGE", "STEP", "LOSS", "PHASE", "TOK/S", "ETA"]
            assert "▸ tritter-tiny-tiny" in first[2] and "/8" in first[2]

            # Wait for the first step: the catch-up and the live stream both delivered, and a chart to draw.
            await until(tui, lambda: len(tui.monitor.history.get(run_id) or ()) > 0, "the first step", 90)
            assert tui.monitor.history[run_id].steps[0] == 1

            out = await press(tui, inp, "jd", lambda: tui.view.detail, "the detail view")
            assert tui.view.selected == run_id  # j on the only run stays on it
            lines = out.splitlines()
            assert len(lines) == H and max(map(len, lines)) <= W
            assert f"▸ tritter-tiny-tiny · {run_id}" in out
            assert "loss (log scale)" in out and "└" in out and "gnorm" in out and "phase" in out
            assert " 0 tiny     1.45M" in out and "predicted steps" in out

            out = await press(tui, inp, "?", lambda: tui.view.help, "the help overlay")
            for key, description in KEYS:
                assert key in out and description[:30] in out
            await press(tui, inp, "?", lambda: not tui.view.help, "help to close")

            # Stop through the monitor: a prompt, n cancels, y sends; the reply lands in the status bar.
            # (On a fast machine the 8 steps may be done already: then s must refuse, saying why.)
            if tui.monitor.runs[run_id].status == "running":
                out = await press(tui, inp, "s", lambda: tui.view.confirm is not None, "the stop prompt")
                assert out.splitlines()[-1].startswith(f" Stop run tritter-tiny-tiny ({run_id})? [y/n]")
                await press(tui, inp, "n", lambda: tui.view.message == "stop: cancelled", "the cancel")
                await press(tui, inp, "s", lambda: tui.view.confirm is not None, "the stop prompt")
                out = await press(tui, inp, "y", lambda: tui.view.message.startswith("stop") and
                                  "sending" not in tui.view.message, "the daemon's reply", 15)
                assert tui.view.message in out.splitlines()[-1]
            else:
                await press(tui, inp, "s", lambda: "nothing to stop" in tui.view.message, "the refusal")
            await until(tui, lambda: tui.monitor.runs[run_id].status in ("stopped", "completed"), "the run to end", 60)
            final = tui.monitor.runs[run_id].status
            if final == "stopped":
                assert not tui.view.message_is_error, tui.view.message
            await until(tui, lambda: "last checkpoint  step " in screen_of(tui), "the last checkpoint", 5)
            assert final in screen_of(tui).splitlines()[1]

            # The daemon dies and comes back: the bar says so, and the monitor recovers by itself.
            await asyncio.to_thread(daemon.kill9)
            await until(tui, lambda: "disconnected — reconnecting" in screen_of(tui).splitlines()[-1],
                        "the disconnected status", 20)
            await asyncio.to_thread(daemon.start)
            await until(tui, lambda: screen_of(tui).splitlines()[-1].startswith(" ● live"), "live again", 30)
            assert tui.monitor.runs[run_id].status == final

            # A monitor opened later catches up from seq 1: the same history, step for step.
            async with running(layout=Layout(home)) as (late, _):
                await until(late, lambda: late.monitor.last_seq >= tui.monitor.last_seq, "the late catch-up", 15)
                assert list(late.monitor.history[run_id].steps) == list(tui.monitor.history[run_id].steps)
                assert late.monitor.runs[run_id] == tui.monitor.runs[run_id]

    asyncio.run(scenario())


def test_offline_monitor(tmp_path: Path) -> None:
    events = stream(finish=False)
    cut = next(i for i, e in enumerate(events) if isinstance(e, StepEvent) and e.step == 40)
    folder = write_run_folder(tmp_path, events[: cut + 1])
    more = write_run_folder(tmp_path / "x", events).joinpath("metrics.jsonl").read_text().splitlines(True)[40:45]

    async def scenario() -> None:
        async with running(runs_dir=tmp_path) as (tui, inp):
            out = screen_of(tui)
            assert "offline" in out.splitlines()[0] and "grow-demo" in out and "40/60" in out
            out = await press(tui, inp, "p", lambda: "needs a running tritterd" in tui.view.message, "the offline note")
            assert "needs a running tritterd" in out.splitlines()[-1]
            out = await press(tui, inp, "d", lambda: tui.view.detail, "the detail view")
            assert "┴" in out and "small" in out
            with (folder / "metrics.jsonl").open("a") as handle:
                handle.writelines(more)
            await until(tui, lambda: "step 45/60" in screen_of(tui), "the grown metrics file", 10)

    asyncio.run(scenario())


def test_daemon_not_running_is_one_line_and_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tritterd is not running" in err and "--runs-dir" in err
    assert main(["--runs-dir", str(home / "nope")]) == 2
    assert main(["--home", str(home), "--runs-dir", str(home)]) == 2

