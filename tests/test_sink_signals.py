"""A sink stopped by a signal exits 0, cleanly, whenever the signal comes (docs/operations.md, "Exit status").

In-process: a sink cancelled (what SIGTERM does) while a blocking step runs in a worker thread —
its save, or the write of an event — waits for that step before its shutdown (``stop``, the
last save, ``close``) starts, so no two writers ever meet on one file.  Real processes: each
sink, SIGTERMed while it still imports its libraries, once it runs, and while it waits for
another instance's lock, exits 0 with no error and no temp file left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import tool

from tritter.clients import tensorboard as tb
from tritter.clients.ckpt.compressor import CompressSettings, Compressor
from tritter.clients.record import MetricsFile, Recorder
from tritter.clients.sink_base import Sink, SinkSettings
from tritter.clients.target import Target
from tritter.clients.upload import Uploader, UploadSettings
from tritter.formats.files import atomic_write
from tritter.protocol.events import AnyEvent, CheckpointEvent, StepEvent
from tritter.protocol.home import Layout

WAIT_S = 60.0  # an upper bound for things that take well under a second (a loaded 2-core machine)


def _step(seq: int, step: int) -> StepEvent:
    return StepEvent(seq=seq, ts=1e9 + seq, run_id="r", step=step, loss=4.0, gradient_norm=1.0, phase="full",
                     was_predicted=False, prediction_error=None, step_time_ms=10.0, stage="tiny", lr=1e-3,
                     tokens=64 * step, tokens_per_s=100.0)


class _Bus:
    """A subscription double: delivers ``events``, then waits like a live bus with nothing new."""

    def __init__(self, events: list[AnyEvent]) -> None:
        self.events = events
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[AnyEvent]:
        for event in self.events:
            yield event
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True


class _Gate:
    """Holds the first call of a wrapped blocking function until ``open``; says whether one is running."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.running = 0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.running += 1
            try:
                if self.calls == 1:
                    self.entered.set()
                    assert self.opened.wait(WAIT_S), "the test never opened the gate"
                return fn(*args, **kwargs)
            finally:
                self.running -= 1

        return held


def _make(kind: str, home: Path, interval_s: float) -> Sink[Any]:
    layout = Layout(home)
    if kind == "record":
        return Recorder(layout, SinkSettings(save_interval_s=interval_s))
    if kind == "tensorboard":
        return tb.TensorBoardSink(layout, SinkSettings(save_interval_s=interval_s))
    if kind == "compress":
        return Compressor(layout, CompressSettings(save_interval_s=interval_s))
    return Uploader(layout, UploadSettings(save_interval_s=interval_s), source=Target.local(layout),
                    hub=object(), token=lambda: None)  # type: ignore[arg-type]  # no upload is due: the hub is never called


def _saved_seq(sink: Sink[Any]) -> int:
    """The cursor the sink's files hold now, read from disk."""
    if isinstance(sink, tb.TensorBoardSink):
        return msgspec.json.decode((sink.logdir / tb.STATE_FILE).read_bytes())["seq"]
    if isinstance(sink, Uploader):
        return msgspec.json.decode(sink.state_path.read_bytes())["cursor"]
    assert sink.cursor_path is not None
    return int(sink.cursor_path.read_text())


async def _cancel_while_held(sink: Sink[Any], gate: _Gate, events: list[AnyEvent]) -> list[int]:
    """Follow ``events``; once ``gate`` holds a blocking step, cancel (as SIGTERM does), then open it.

    Returns, for each time the sink's ``stop`` ran (its shutdown beginning), how many held steps
    were still running then.  The gate opens a few loop turns after the cancel: enough for a
    shutdown that does not wait for the step to begin (``stop`` runs in the turn right after).
    """
    await sink.start()
    seen: list[int] = []
    real_stop = sink.stop

    async def stop() -> None:
        seen.append(gate.running)
        await real_stop()

    sink.stop = stop  # type: ignore[method-assign]
    task = asyncio.ensure_future(sink.follow(_Bus(events)))  # type: ignore[arg-type]
    entered = await asyncio.to_thread(gate.entered.wait, WAIT_S)
    assert entered, "the held step never started"
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    gate.opened.set()
    try:
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await sink.close()
    return seen


@pytest.mark.parametrize("kind", ["record", "tensorboard", "compress", "upload"])
def test_a_signal_during_a_save_waits_for_it_before_the_last_save(kind: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The user trial's ``No such file or directory: .../.tritter-tensorboard.json.PID.tmp``: SIGTERM
    while the periodic save ran; the shutdown's last save then wrote the same temp file at once."""
    gate = _Gate()
    real_replace = os.replace
    held_replace = gate.wrap(real_replace)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).is_relative_to(tmp_path):  # the sink's save: held inside the atomic write, temp file written
            return held_replace(src, dst, *args, **kwargs)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    sink = _make(kind, tmp_path, interval_s=1e-9)  # a save after every event
    seen = asyncio.run(_cancel_while_held(sink, gate, [_step(1, 1)]))

    assert seen == [0], f"the shutdown began while the save was still running ({seen})"
    assert gate.running == 0 and _saved_seq(sink) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def _checkpoint(seq: int) -> CheckpointEvent:
    return CheckpointEvent(seq=seq, ts=1e9 + seq, run_id="r", path="checkpoints/step-00000001.safetensors",
                           step=1, stage="tiny", bytes=1, sha256="0" * 64)


@pytest.mark.parametrize("kind", ["record", "tensorboard", "compress"])
def test_a_signal_during_an_events_blocking_step_waits_for_it(kind: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while an event's write runs in a thread, the sink lets it end before its shutdown
    (the last save would otherwise commit a file another thread is still writing); what the
    last save then records is consistent with the files."""
    gate = _Gate()
    if kind == "record":  # opening (and recovering) the run's metrics.jsonl
        monkeypatch.setattr(MetricsFile, "_open_and_recover", staticmethod(gate.wrap(MetricsFile._open_and_recover)))
        event: AnyEvent = _step(1, 1)
    elif kind == "tensorboard":  # writing the step's scalars
        monkeypatch.setattr(tb.TensorBoardSink, "_write", gate.wrap(tb.TensorBoardSink._write))
        event = _step(1, 1)
    else:  # compressing a checkpoint (here: finding it gone)
        monkeypatch.setattr(Compressor, "handle", gate.wrap(Compressor.handle))
        event = _checkpoint(1)
    sink = _make(kind, tmp_path, interval_s=3600.0)  # no save but the last one
    seen = asyncio.run(_cancel_while_held(sink, gate, [event]))

    assert seen == [0], f"the shutdown began while the event's step was still running ({seen})"
    assert not list(tmp_path.rglob("*.tmp"))
    if isinstance(sink, tb.TensorBoardSink):
        # Its records are in the file: the saved seq counts the event, and the committed size is the file's.
        assert _saved_seq(sink) == 1
        state = msgspec.json.decode((sink.logdir / tb.STATE_FILE).read_bytes())
        ((name, size),) = state["files"].items()
        assert (sink.logdir / name).stat().st_size == size
    elif isinstance(sink, Compressor):
        assert _saved_seq(sink) == 1  # handled in the thread, cursor saved there
    else:
        assert not (tmp_path / "recorder.cursor").exists()  # cut before its line: it comes again


def test_two_atomic_writes_of_one_file_at_once_both_land(tmp_path: Path) -> None:
    """Each write has a temp file of its own: a write cut short cannot take another's away."""
    target = tmp_path / "state.json"
    inside = threading.Barrier(2)

    def content(text: bytes) -> Callable[[Any], None]:
        def write(out: Any) -> None:
            out.write(text)
            inside.wait(WAIT_S)  # both temp files are open and written before either is renamed

        return write

    errors: list[BaseException] = []

    def writer(text: bytes) -> None:
        try:
            atomic_write(target, content(text))
        except BaseException as error:  # noqa: BLE001 - collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(text,)) for text in (b"one", b"two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert errors == []
    assert target.read_bytes() in (b"one", b"two")
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------ real processes
SINKS = {
    "tritter-record": "tritter.clients.record",
    "tritter-compress": "tritter.clients.ckpt.compressor",
    "tritter-upload": "tritter.clients.upload",
    "tritter-tensorboard": "tritter.clients.tensorboard",
}
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _spawn(argv: list[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITTER_HOME", "HF_TOKEN")}
    with open(log, "wb") as stderr:
        return subprocess.Popen([*argv, "--home", str(home)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, env={**env, "HF_HUB_OFFLINE": "1"})


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _handles_sigterm(pid: int) -> bool:
    for line in _proc(pid, "status").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


def _imports_begun(pid: int) -> bool:
    """Whether the process has loaded a third-party extension module (its slow imports are under way)."""
    return any("site-packages" in line and ".so" in line for line in _proc(pid, "maps").splitlines())


def _wait_for(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}) before {what}:\n{log.read_text(errors='replace')}")
        assert time.monotonic() < deadline, f"not {what} after {WAIT_S:g} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.0005)


def _stop(process: subprocess.Popen[bytes], log: Path, home: Path) -> None:
    """SIGTERM ``process``; it must exit 0, say no error and leave no temp file."""
    try:
        process.send_signal(signal.SIGTERM)
        rc = process.wait(WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit status {rc} on SIGTERM:\n{text}"
    assert "Traceback" not in text and "error:" not in text, text
    assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]


def _argv(program: str, how: str) -> list[str]:
    return [tool(program)] if how == "script" else [sys.executable, "-m", SINKS[program]]


@pytest.mark.parametrize("how", ["script", "module"])  # the console script (users), python -m (tritterd's children)
@pytest.mark.parametrize("program", list(SINKS))
def test_sigterm_while_the_sink_still_imports_exits_0(program: str, how: str, tmp_path: Path) -> None:
    """As early as a program can take a signal: the moment it handles SIGTERM, or else the moment its
    slow imports (a third-party extension) begin, whichever comes first — before the fix, the
    second, and the default action ended it with 143."""
    log = tmp_path / "stderr"
    process = _spawn(_argv(program, how), tmp_path / "home", log)
    _wait_for("starting", lambda: _handles_sigterm(process.pid) or _imports_begun(process.pid), process, log)
    _stop(process, log, tmp_path / "home")


@pytest.mark.parametrize("program", list(SINKS))
def test_sigterm_once_the_sink_runs_exits_0(program: str, tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    process = _spawn(_argv(program, "script"), tmp_path / "home", log)
    _wait_for("following the bus", lambda: "following" in log.read_text(errors="replace"), process, log)
    _stop(process, log, tmp_path / "home")


def test_sigterm_while_waiting_for_another_instance_exits_0(tmp_path: Path) -> None:
    """A second instance waits for the home's lock; SIGTERM ends the wait (and it), the first one runs on."""
    home = tmp_path / "home"
    first_log, second_log = tmp_path / "first", tmp_path / "second"
    first = _spawn(_argv("tritter-record", "script"), home, first_log)
    try:
        _wait_for("following the bus", lambda: "following" in first_log.read_text(errors="replace"), first, first_log)
        second = _spawn(_argv("tritter-record", "script"), home, second_log)
        _wait_for("waiting for the lock", lambda: "waiting for it to exit" in second_log.read_text(errors="replace"),
                  second, second_log)
        _stop(second, second_log, home)
        assert first.poll() is None
        _stop(first, first_log, home)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
