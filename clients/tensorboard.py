"""``tritter-tensorboard``: TensorBoard event files for every run, ``HOME/tensorboard/<run_id>/``.

A bus sink (``clients/sink_base.py``) like the recorder: standalone or supervised by tritterd
(``--with-tensorboard``), ``--home`` or ``--connect``.  Scalars use ``step`` = the run's global
optimizer step and the event's own time as wall time:

- ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``, ``train/step_time_ms``,
  ``train/mfu`` (on a GPU whose peak is known);
- ``hybrid/predicted`` (1 on a predicted step, 0 otherwise: the predicted-step markers) and
  ``hybrid/prediction_error``;
- ``eval/loss``, ``eval/perplexity`` (periodic held-out eval), ``stage/eval_loss`` and
  ``stage/index`` at each stage start and end (the stage boundaries), with a text note;
- ``system/*`` and ``gpu<i>/*``; samples and alerts as text.

Exactly once, across its own ``kill -9`` and daemon restarts: the state file
``HOME/tensorboard/.tritter-tensorboard.json`` holds the last seq handled *and* the committed
size of every event file written (saved only after the writers are flushed and fsynced).
Records are written synchronously (tensorboardX's ``EventsWriter``, with its ``summary``
builders): ``SummaryWriter`` hands them to a background thread, and its ``flush()`` does not wait
for that thread's queue, so a committed size could miss records the saved seq already counted —
and a restart would then cut them off and never see them again.  On
start, each event file is cut back to its committed size, and a file the state does not know
(opened after the last save) is removed; the bus then re-delivers everything after that seq.
So no record is ever in a file twice, and none is missing.  Every writer opens a file of its own
name: tensorboardX names a file by the second and the host only, and opens it with ``"wb"``, so
a run's writer reopened in the same second (an event after its terminal one, a catch-up that
replays a whole run at once) would otherwise empty the file already written.  The suffix holds
this start's session number and a count of writers it opened (TensorBoard reads all files of a
folder, in name order: time, then session, then count).
"""

from __future__ import annotations

from tritter.clients.sink_signals import stop_quietly_while_starting

# First of all, before the slow imports below (tensorboardX: seconds): run as a program, a
# SIGTERM/SIGINT from here on exits 0 (docs/operations.md, "Exit status").
stop_quietly_while_starting(__name__, "tritter-tensorboard")

import logging
import os
import sys
from pathlib import Path

import msgspec
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.summary import scalar, text

from tritter.clients.sink_base import Sink, SinkSettings, finish_in_thread, sink_main, sink_parser
from tritter.clients.target import Target
from tritter.formats.files import atomic_write
from tritter.protocol.events import (
    AlertEvent,
    AnyEvent,
    EvalEvent,
    RunEvent,
    SampleEvent,
    StageEvent,
    StepEvent,
    SystemEvent,
)
from tritter.protocol.home import Layout

log = logging.getLogger("tritter-tensorboard")

STATE_FILE = ".tritter-tensorboard.json"
EVENT_FILE_PREFIX = "events.out.tfevents."
TERMINAL = frozenset({"completed", "failed", "stopped"})


class _State(msgspec.Struct):
    seq: int = 0
    session: int = 0
    files: dict[str, int] = {}  # event file path relative to the logdir -> committed bytes
    # The highest step written per run.  TensorBoard drops every point above a step that comes
    # back lower (its "orphaned data" purge), and a resumed worker's system events carry the
    # re-trained steps: non-step events are written at max(their step, this).
    steps: dict[str, int] = {}


class _EventFile:
    """One event file, written synchronously: each ``add_*`` is in the file's buffer when it
    returns (``SummaryWriter``'s method names, so the writing code reads the same)."""

    def __init__(self, folder: Path, suffix: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._events = EventsWriter(str(folder / "events"), suffix)  # writes the file-version record
        self._events.flush()  # the file exists, with its header, from here on
        (self.path,) = folder.glob(f"{EVENT_FILE_PREFIX}*{suffix}")  # one file: the suffix is this writer's own

    def add_scalar(self, tag: str, value: float, step: int, walltime: float) -> None:
        """Append a scalar point (``value`` at global ``step``, unix ``walltime``)."""
        self._events.write_event(Event(summary=scalar(tag, value), step=int(step), wall_time=walltime))

    def add_text(self, tag: str, body: str, step: int, walltime: float) -> None:
        """Append a text entry (markdown ``body``) at global ``step``."""
        self._events.write_event(Event(summary=text(tag, body), step=int(step), wall_time=walltime))

    def commit(self) -> int:
        """Flush and fsync the file; returns its size in bytes (everything added so far)."""
        self._events.flush()
        with open(self.path, "rb") as handle:
            os.fsync(handle.fileno())
            return os.fstat(handle.fileno()).st_size

    def close(self) -> None:
        """Flush and close the file."""
        self._events.close()


class TensorBoardSink(Sink[SinkSettings]):
    """Writes each run's scalars and texts with tensorboardX (see the module docstring)."""

    name = "tritter-tensorboard"
    lock_file = "tensorboard.lock"
    cursor_file = None  # the cursor lives in the state file, with the committed file sizes
    redo_note = "event files are rebuilt from seq 1"

    def __init__(self, layout: Layout, settings: SinkSettings | None = None, source: Target | None = None) -> None:
        self.logdir = layout.home / "tensorboard"
        self.state = _State()
        super().__init__(layout, settings, source)
        self.writers: dict[str, _EventFile] = {}
        self._opened = 0  # writers opened by this start (each file's name is unique by it)

    def describe(self) -> str:
        """The start-up log line: where the event files are written."""
        return f"writing TensorBoard event files under {self.logdir}"

    # -- state ------------------------------------------------------------------------------------
    def load_cursor(self) -> int:
        """Read the state file (committed event-file sizes and seq); returns its seq, 0 when missing or unreadable
        (then everything is redone)."""
        path = self.logdir / STATE_FILE
        try:
            self.state = msgspec.json.decode(path.read_bytes(), type=_State)
        except FileNotFoundError:
            self.state = _State()
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("%s is unreadable; %s", path, self.redo_note)
            self.state = _State(files={})
        return self.state.seq

    def save_progress(self) -> None:
        """Flush and fsync every open event file, record their sizes, then the seq (atomically)."""
        for entry in self.writers.values():
            self._commit(entry)
        self.state.seq = self.cursor
        atomic_write(self.logdir / STATE_FILE, msgspec.json.encode(self.state))

    def _commit(self, entry: _EventFile) -> None:
        self.state.files[entry.path.relative_to(self.logdir).as_posix()] = entry.commit()

    async def start(self) -> None:
        """Cut event files back to their committed sizes and drop uncommitted ones (in a thread), so no record is
        written twice."""
        await finish_in_thread(self._sweep)

    def _sweep(self) -> None:
        """Cut every event file back to what the state committed; drop files it never committed."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.logdir.glob(f"*/{EVENT_FILE_PREFIX}*")):
            committed = self.state.files.get(path.relative_to(self.logdir).as_posix())
            if committed is None:
                log.info("removing %s: written after the last saved state, its events come again", path)
                path.unlink()
            elif path.stat().st_size > committed:
                log.info("cutting %s back to %d bytes (the last saved state)", path, committed)
                os.truncate(path, committed)
        self.state.session += 1  # new files of this start sort after the older ones of the same second

    # -- events -------------------------------------------------------------------------------------
    async def on_event(self, event: AnyEvent) -> None:
        """Write step, eval, stage, sample, system and alert events as scalars/texts of their run (in a thread);
        a terminal run event closes its run's writer; other events are ignored.
        """
        if isinstance(event, RunEvent):
            if event.status in TERMINAL and event.run_id in self.writers:
                await finish_in_thread(self._close_run, event.run_id)
            return
        if not isinstance(event, StepEvent | EvalEvent | StageEvent | SampleEvent | SystemEvent | AlertEvent):
            return
        await finish_in_thread(self._write, event)

    def _writer(self, run_id: str) -> _EventFile:
        entry = self.writers.get(run_id)
        if entry is None:
            self._opened += 1
            entry = self.writers[run_id] = _EventFile(self.logdir / run_id, f".s{self.state.session:06d}.w{self._opened:06d}")
        return entry

    def _close_run(self, run_id: str) -> None:
        entry = self.writers.pop(run_id)
        self._commit(entry)  # its size must be known before the file is let go
        entry.close()

    def _write(self, event: AnyEvent) -> None:
        w = self._writer(event.run_id)
        ts = event.ts
        last = self.state.steps.get(event.run_id, 0)
        at = max(getattr(event, "step", 0), last)  # never lower than a step already written
        self.state.steps[event.run_id] = at
        if isinstance(event, StepEvent):
            step = event.step
            for tag, value in (("train/loss", event.loss), ("train/lr", event.lr), ("train/grad_norm", event.gradient_norm),
                               ("train/tokens_per_s", event.tokens_per_s), ("train/step_time_ms", event.step_time_ms),
                               ("hybrid/predicted", 1.0 if event.was_predicted else 0.0)):
                w.add_scalar(tag, value, step, walltime=ts)
            if event.prediction_error is not None:
                w.add_scalar("hybrid/prediction_error", event.prediction_error, step, walltime=ts)
            if event.mfu is not None:
                w.add_scalar("train/mfu", event.mfu, step, walltime=ts)
        elif isinstance(event, EvalEvent):
            w.add_scalar("eval/loss", event.loss, at, walltime=ts)
            w.add_scalar("eval/perplexity", event.perplexity, at, walltime=ts)
        elif isinstance(event, StageEvent):
            w.add_scalar("stage/index", event.index, at, walltime=ts)
            if event.eval_loss is not None:
                w.add_scalar("stage/eval_loss", event.eval_loss, at, walltime=ts)
            grown = f", grown from {event.grown_from}" if event.grown_from else ""
            w.add_text("stages", f"stage {event.index} **{event.stage}** {event.status} at step {event.step} "
                                 f"({event.params:,} parameters{grown})", at, walltime=ts)
        elif isinstance(event, SampleEvent):
            for i, sample in enumerate(event.samples):
                w.add_text(f"samples/{i}", f"**{sample.prompt}**\n\ngreedy: {sample.greedy}\n\n"
                                           f"sampled (T={sample.temperature:g}, top-k {sample.top_k}): {sample.sampled}",
                           at, walltime=ts)
        elif isinstance(event, SystemEvent):
            for tag, value in _system_scalars(event):
                w.add_scalar(tag, value, at, walltime=ts)
        elif isinstance(event, AlertEvent):
            w.add_text("alerts", f"**{event.level}** {event.reason} at step {event.step}: {event.message}",
                       at, walltime=ts)
        # Handled: a signal that cancelled the await meanwhile must not leave the cursor before an
        # event whose records the last save commits (the restart would write them twice).
        self.cursor = event.seq

    async def close(self) -> None:
        """Close every open writer (in a thread)."""
        for entry in self.writers.values():
            await finish_in_thread(entry.close)
        self.writers.clear()


def _system_scalars(event: SystemEvent) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [
        ("system/cpu_percent", event.cpu_percent), ("system/rss_gb", event.rss_bytes / 1e9),
        ("system/host_memory_used_gb", event.host_memory_used_bytes / 1e9),
    ]
    for gpu in event.gpus:
        for name, value in (("utilization_pct", gpu.utilization_pct),
                            ("memory_used_gb", None if gpu.memory_used_bytes is None else gpu.memory_used_bytes / 1e9),
                            ("temperature_c", gpu.temperature_c), ("power_w", gpu.power_w)):
            if value is not None:
                out.append((f"gpu{gpu.index}/{name}", float(value)))
    return out


def main(argv: list[str] | None = None) -> int:
    """``tritter-tensorboard [--home DIR | --connect URL ...] [--runs-home DIR]``; the exit status."""
    parser = sink_parser(TensorBoardSink, "Write TensorBoard event files for every run from the event bus.",
                         "the home whose tensorboard/<run_id>/ to write")
    return sink_main(TensorBoardSink, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

