"""The monitor's view-model: run states folded from events, plus the per-step history the views draw.

Pure data, no I/O except the offline loader at the bottom (which only reads run folders).  Live,
``Monitor.apply`` is fed every event from the ``Subscription``; offline, ``RunsDirSource.poll``
feeds it ``run.json`` states and ``metrics.jsonl`` lines.  Both end in the same ``RunHistory``,
so the renderers never know where the numbers came from.
"""

from __future__ import annotations

import bisect
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tritter.clients.tui.extras import RunExtras, read_offline
from tritter.protocol.events import AnyEvent, EvalEvent, RunEvent, SampleEvent, StepEvent, SystemEvent
from tritter.protocol.state import RunState, fold

ETA_WINDOW = 20  # recent steps used for the step rate: long enough to smooth, short enough to follow growth


@dataclass
class PhaseSpan:
    """A run of consecutive steps in one phase, ``first_step`` to ``last_step`` inclusive (optimizer steps)."""

    phase: str
    first_step: int
    last_step: int


@dataclass
class StageMark:
    """The first step trained at a new stage size (where the chart draws a boundary)."""

    step: int
    stage: str


PHASES: tuple[str, ...] = ("warmup", "full", "predict", "correct")
UNKNOWN_PHASE = len(PHASES)  # a phase newer than this client: still counted, drawn as "?"
_PHASE_CODE = {phase: code for code, phase in enumerate(PHASES)}


@dataclass
class RunHistory:
    """Every step of one run, in step order; a replayed step (resume after a crash) rewinds.

    Columns are ``array.array``s: appending is as cheap as a list, and the renderer turns them
    into numpy arrays with one memcpy, which matters at 10^5 steps and several frames a second.
    """

    steps: array = field(default_factory=lambda: array("q"))
    losses: array = field(default_factory=lambda: array("d"))
    grad_norms: array = field(default_factory=lambda: array("d"))
    phase_codes: array = field(default_factory=lambda: array("b"))
    predicted: array = field(default_factory=lambda: array("b"))
    errors: array = field(default_factory=lambda: array("d"))  # NaN: not a predicted step
    times: array = field(default_factory=lambda: array("d"))
    stages: list[str] = field(default_factory=list)
    predicted_count: int = 0
    error_sum: float = 0.0
    error_count: int = 0
    spans: list[PhaseSpan] = field(default_factory=list)
    marks: list[StageMark] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last_step(self) -> int:
        """The newest optimizer step recorded (0 when none)."""
        return self.steps[-1] if self.steps else 0

    @property
    def phases(self) -> list[str]:
        """Each recorded step's phase name, in step order (``?`` for a phase newer than this client)."""
        return [PHASES[c] if c < UNKNOWN_PHASE else "?" for c in self.phase_codes]

    def add(self, event: StepEvent) -> None:
        """Append one step event; a step at or before the last one (a resume) first rewinds the history to before it."""
        if self.steps and event.step <= self.steps[-1]:
            self._rewind(event.step)  # the run resumed from an earlier checkpoint: redo from there
        error = math.nan if event.prediction_error is None else event.prediction_error
        self._append(event.step, event.loss, event.gradient_norm, _PHASE_CODE.get(event.phase, UNKNOWN_PHASE),
                     event.was_predicted, error, event.ts, event.stage)

    def _append(self, step: int, loss: float, gnorm: float, phase: int, predicted: bool,
                error: float, ts: float, stage: str) -> None:
        if self.stages and stage != self.stages[-1]:
            self.marks.append(StageMark(step, stage))
        self.steps.append(step)
        self.losses.append(loss)
        self.grad_norms.append(gnorm)
        self.phase_codes.append(phase)
        self.predicted.append(predicted)
        self.errors.append(error)
        self.times.append(ts)
        self.stages.append(stage)
        if predicted:
            self.predicted_count += 1
        if math.isfinite(error):
            self.error_sum += error
            self.error_count += 1
        name = PHASES[phase] if phase < UNKNOWN_PHASE else "?"
        if self.spans and self.spans[-1].phase == name:
            self.spans[-1].last_step = step
        else:
            self.spans.append(PhaseSpan(name, step, step))

    def _rewind(self, step: int) -> None:
        keep = bisect.bisect_left(self.steps, step)
        rows = list(zip(self.steps, self.losses, self.grad_norms, self.phase_codes, self.predicted,
                        self.errors, self.times, self.stages))[:keep]
        fresh = RunHistory()
        for row in rows:
            fresh._append(*row)
        self.__dict__.update(fresh.__dict__)

    @property
    def predicted_share(self) -> float | None:
        """The fraction (0..1) of recorded steps that were predicted; None when there are none."""
        return self.predicted_count / len(self.steps) if self.steps else None

    @property
    def mean_prediction_error(self) -> float | None:
        """The mean relative L2 prediction error over the steps that report one; None when none do."""
        return self.error_sum / self.error_count if self.error_count else None

    def seconds_per_step(self) -> float | None:
        """Wall time per step over the recent window (includes evals and checkpoints, as the ETA should)."""
        n = min(len(self.times), ETA_WINDOW)
        if n < 2:
            return None
        span = self.times[-1] - self.times[-n]
        steps = self.steps[-1] - self.steps[-n]
        return span / steps if span > 0 and steps > 0 else None


@dataclass
class Confirm:
    """A control request waiting for y/n."""

    prompt: str
    op: str  # pause | resume | stop | checkpoint
    run_id: str


@dataclass
class ViewState:
    """What the user is looking at (not what the runs are doing)."""

    selected: str | None = None  # run_id: stays on the same run when new runs appear
    detail: bool = False
    help: bool = False
    confirm: Confirm | None = None
    message: str = ""
    message_is_error: bool = False
    # Monitoring views (clients/tui/monitor_views.py).
    smoothing: float = 0.0  # debiased-EMA weight of the loss chart (m cycles SMOOTHING_LEVELS)
    marked: set[str] = field(default_factory=set)  # run ids marked for the overlay (space)
    overlay: bool = False  # o: the marked runs' loss curves on one chart
    by_tokens: bool = False  # x: align the overlay by tokens trained instead of by step
    alerts: bool = False  # a: the alert list


class Monitor:
    """All runs the monitor knows: ``RunState`` (the protocol's fold) plus each run's history."""

    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.history: dict[str, RunHistory] = {}
        self.extras: dict[str, RunExtras] = {}  # eval curve, tokens, latest sample and system (extras.py)
        self.version = 0  # bumped on every change: the app redraws only when it moved
        self.last_seq = 0
        self.events = 0

    def apply(self, event: AnyEvent) -> None:
        """Fold one live event (same fold as the daemon), and keep the step history."""
        state = fold(self.runs, event)
        self.last_seq = max(self.last_seq, event.seq)
        self.events += 1
        self.version += 1
        if state is None:
            return
        if isinstance(event, StepEvent | EvalEvent | SampleEvent | SystemEvent):
            self.extras_of(event.run_id).add(event)
        if isinstance(event, StepEvent):
            self.history_of(event.run_id).add(event)
        elif isinstance(event, RunEvent) and event.status == "started" and not state.run_name and event.config:
            state.run_name = event.config.name

    def extras_of(self, run_id: str) -> RunExtras:
        """The RunExtras of ``run_id``, created empty on first use."""
        extras = self.extras.get(run_id)
        if extras is None:
            extras = self.extras[run_id] = RunExtras()
        return extras

    def history_of(self, run_id: str) -> RunHistory:
        """The RunHistory of ``run_id``, created empty on first use."""
        history = self.history.get(run_id)
        if history is None:
            history = self.history[run_id] = RunHistory()
        return history

    def set_state(self, state: RunState) -> None:
        """Offline: take a run's state as ``run.json`` has it."""
        self.runs[state.run_id] = state
        self.version += 1

    def add_step(self, run_id: str, event: StepEvent) -> None:
        """Offline: one ``metrics.jsonl`` line."""
        self.history_of(run_id).add(event)
        self.extras_of(run_id).add(event)
        state = self.runs.get(run_id)
        if state is not None and event.step >= state.current_step:
            # run.json may lag its metrics (or the daemon died): show the newest step we have.
            state.current_step = event.step
            state.current_loss = event.loss
            state.current_phase = event.phase
            state.current_stage = event.stage
            state.tokens_per_s = event.tokens_per_s
            state.mfu = event.mfu
        self.version += 1

    def ordered(self) -> list[RunState]:
        """Oldest first, like ``tritterctl runs``: a new run appears at the bottom, selection stays put."""
        return sorted(self.runs.values(), key=lambda r: (r.started or math.inf, r.run_id))

    def selected(self, view: ViewState) -> RunState | None:
        """The selected run, or None when there are none; an unknown selection falls back to the newest run (and
        ``view`` is updated)."""
        runs = self.ordered()
        if not runs:
            return None
        for run in runs:
            if run.run_id == view.selected:
                return run
        view.selected = runs[-1].run_id  # default: the newest run (the one you most likely want)
        return runs[-1]

    def move(self, view: ViewState, delta: int) -> None:
        """Move the selection ``delta`` rows in ``ordered()`` (negative = up), clamped to the first and last run."""
        runs = self.ordered()
        if not runs:
            return
        current = self.selected(view)
        index = runs.index(current) if current is not None else 0
        view.selected = runs[max(0, min(len(runs) - 1, index + delta))].run_id


# -- offline: run folders -------------------------------------------------------------------
_state_decoder = msgspec.json.Decoder(RunState)
_record_decoder = msgspec.json.Decoder(StepEvent)  # a metrics line is a StepEvent without envelope


@dataclass
class _Folder:
    path: Path
    run_json_sig: tuple[int, int] | None = None
    metrics_offset: int = 0
    metrics_ino: int | None = None
    bad_lines: int = 0
    extra_offsets: dict[str, int] = field(default_factory=dict)  # eval.jsonl / samples.jsonl bytes read


class RunsDirSource:
    """Reads ``run.json`` + ``metrics.jsonl`` under a runs folder; ``poll`` picks up what grew.

    Only whole lines are consumed: a torn last line (the recorder mid-write, or killed) is left
    for the next poll, when it is either complete or cut away by the recorder.
    """

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self.folders: dict[str, _Folder] = {}
        self.problems: dict[str, str] = {}  # run id -> why its run.json could not be read

    def poll(self, monitor: Monitor) -> bool:
        """Fold into ``monitor`` what grew in each run folder since the last poll (run.json, whole new lines of
        metrics/eval/samples); returns whether anything changed.  An unreadable runs folder returns False.
        """
        changed = False
        try:
            entries = sorted(p for p in self.runs_dir.iterdir() if p.is_dir())
        except OSError:
            return False
        for path in entries:
            folder = self.folders.get(path.name)
            if folder is None:
                folder = self.folders[path.name] = _Folder(path)
            changed |= self._poll_state(folder, monitor)
            changed |= self._poll_metrics(folder, monitor)
            if read_offline(folder.path, monitor.extras_of(path.name), folder.extra_offsets):
                monitor.version += 1
                changed = True
        return changed

    def _poll_state(self, folder: _Folder, monitor: Monitor) -> bool:
        run_id = folder.path.name
        path = folder.path / "run.json"
        try:
            st = path.stat()
        except OSError:
            if run_id not in monitor.runs and (folder.path / "metrics.jsonl").exists():
                monitor.set_state(RunState(run_id=run_id, run_name=run_id))  # metrics without run.json
                return True
            return False
        sig = (st.st_mtime_ns, st.st_size)
        if sig == folder.run_json_sig:
            return False
        try:
            state = _state_decoder.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
            self.problems[run_id] = f"run.json unreadable: {error}"
            return False  # maybe mid-rewrite: try again next poll (sig not stored)
        folder.run_json_sig = sig
        self.problems.pop(run_id, None)
        history = monitor.history.get(run_id)
        if history is not None and history.steps and history.last_step > state.current_step:
            last = len(history.steps) - 1
            state.current_step = history.steps[last]
            state.current_loss = history.losses[last]
            code = history.phase_codes[last]
            state.current_phase = PHASES[code] if code < UNKNOWN_PHASE else "?"
            state.current_stage = history.stages[last]
        state.run_id = state.run_id or run_id
        monitor.set_state(state)
        return True

    def _poll_metrics(self, folder: _Folder, monitor: Monitor) -> bool:
        path = folder.path / "metrics.jsonl"
        try:
            with path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                if folder.metrics_ino != st.st_ino or st.st_size < folder.metrics_offset:
                    # A new or rewritten file: read it again from the top.
                    if folder.metrics_ino is not None:
                        monitor.history.pop(folder.path.name, None)
                    folder.metrics_ino, folder.metrics_offset = st.st_ino, 0
                if st.st_size == folder.metrics_offset:
                    return False
                handle.seek(folder.metrics_offset)
                data = handle.read(st.st_size - folder.metrics_offset)
        except OSError:
            return False
        end = data.rfind(b"\n") + 1  # whole lines only
        if end == 0:
            return False
        folder.metrics_offset += end
        run_id = folder.path.name
        if run_id not in monitor.runs:
            monitor.set_state(RunState(run_id=run_id, run_name=run_id))
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                event = _record_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                folder.bad_lines += 1
                continue
            event.run_id = run_id
            monitor.add_step(run_id, event)
        return True


def load_runs_dir(runs_dir: Path) -> tuple[Monitor, RunsDirSource]:
    """Read every run folder once; keep the source to ``poll`` for growth."""
    monitor = Monitor()
    source = RunsDirSource(runs_dir)
    source.poll(monitor)
    return monitor, source

