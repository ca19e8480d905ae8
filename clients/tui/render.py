"""Pure rendering: view-model in, prompt_toolkit formatted text out (no I/O, no app state).

Every function takes the size it may use and returns lines that fit it exactly, so the app is
one full-screen control and a test can render a screen to plain text and read it.  The loss
chart, the grad-norm sparkline and the phase timeline share one x-axis (steps first..last,
the same columns), so a spike in one lines up with the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tritter.clients.data_cmd import prepare_line
from tritter.clients.tui.extras import RunExtras
from tritter.clients.tui.monitor_views import (
    Scale,
    alert_line,
    alerts_view,
    extra_layers,
    merge,
    overlay_view,
    sample_pane,
    system_pane,
)
from tritter.clients.tui.model import PHASES, Monitor, RunHistory, StageMark, ViewState
from tritter.recipe.eta import eta_seconds
from tritter.formats.text import clip, display_width, fmt_duration, printable
from tritter.formats.text import fit as fit_text
from tritter.protocol.state import RunState, stage_status

Fragment = tuple[str, str]
Line = list[Fragment]

GUTTER = 8  # y-axis labels left of the chart; the sparkline and timeline keep the same left edge
MIN_CHART_ROWS = 3
MONITOR_CHART_ROWS = 8  # the system and sample panes only show while the chart keeps this many rows
SPARK = "▁▂▃▄▅▆▇█"
# Height = compute: predicted steps cost no backward pass, so they are the low bars.
PHASE_GLYPHS: dict[str, str] = {"warmup": "▆", "full": "█", "predict": "▁", "correct": "▄"}
assert tuple(PHASE_GLYPHS) == PHASES  # same order: the model's phase codes index both
BOUNDARY = "┊"

# Every key the app binds, in help order (the help overlay and the tests read this list).
KEYS: tuple[tuple[str, str], ...] = (
    ("j / ↓", "select the next run"),
    ("k / ↑", "select the previous run"),
    ("d", "details of the selected run: loss chart, grad norm, phases, stages"),
    ("r", "refresh now (offline: re-read the run folders)"),
    ("p", "pause the selected run, or resume it (asks y/n)"),
    ("s", "stop the selected run (asks y/n)"),
    ("c", "write a checkpoint of the selected run now (asks y/n)"),
    ("y / n", "answer the confirmation prompt"),
    ("m", "smoothing off/0.6/0.9/0.99 (debiased EMA, raw curve faint)"),
    ("space", "mark or unmark the selected run for the overlay"),
    ("o", "overlay the loss curves of the marked runs (2+)"),
    ("x", "overlay x axis: global step or tokens trained"),
    ("a", "the alert list (all runs, newest first)"),
    ("?", "show or hide this help"),
    ("Esc", "close this help, cancel a prompt"),
    ("q", "quit (also Ctrl-C)"),
)


# -- small formatters ------------------------------------------------------------------------
def fmt_loss(value: float | None) -> str:
    """A loss (nats/token) for a column: 4 decimals below 100, 1 above, ``-`` for None, ``nan``/``inf`` as such."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def fmt_si(value: float) -> str:
    """1234 -> 1.2k, 1450624 -> 1.45M: compact counts for narrow columns."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.2f}{unit}" if scaled < 10 else f"{scaled:.1f}{unit}" if scaled < 100 else f"{scaled:.0f}{unit}"
    return f"{value:.0f}"


def fmt_bytes(n: int) -> str:
    """A byte count in decimal units: ``512 B``, ``17.4 MB`` (``fmt_si`` then a space and B)."""
    text = fmt_si(n)
    return f"{text[:-1]} {text[-1]}B" if n >= 1000 else f"{n} B"  # 17.4M -> 17.4 MB


# -- lines of exact width ----------------------------------------------------------------------
def fit(line: Line, width: int, style: str = "") -> Line:
    """Clip or pad ``line`` to exactly ``width`` terminal cells (pad in ``style``).

    Cells, not characters: a CJK character takes two, and control characters are shown
    escaped (formats/text.py), so user text cannot shift the columns after it.
    """
    out: Line = []
    used = 0
    for frag_style, text in line:
        if used >= width:
            break
        cells = display_width(text)
        if used + cells > width:
            text = clip(text, width - used, ellipsis="")
            cells = display_width(text)
        else:
            text = printable(text)
        out.append((frag_style, text))
        used += cells
    if used < width:
        out.append((style, " " * (width - used)))
    return out


def plain(lines: Sequence[Line]) -> str:
    """The text of some lines, styles dropped (for tests, docs and snapshots)."""
    return "\n".join("".join(text for _, text in line).rstrip() for line in lines)


def _chars(line: Line) -> list[Fragment]:
    return [(style, ch) for style, text in line for ch in text]


def _group(chars: list[Fragment]) -> Line:
    out: Line = []
    for style, ch in chars:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
    return out


def overlay(lines: list[Line], box: list[Line], top: int, left: int) -> list[Line]:
    """Paint ``box`` over ``lines`` at (top, left): the help overlay."""
    result = list(lines)
    for i, box_line in enumerate(box):
        row = top + i
        if not 0 <= row < len(result):
            continue
        chars = _chars(result[row])
        for j, cell in enumerate(_chars(box_line)):
            if 0 <= left + j < len(chars):
                chars[left + j] = cell
        result[row] = _group(chars)
    return result


# -- the shared x-axis -------------------------------------------------------------------------
# A long run has 10^5 steps and a frame has ~200 columns: every series is reduced per column
# with numpy, so a frame costs milliseconds however long the run is.
def _column_of(first: int, last: int, columns: int) -> Callable[[float], int]:
    span = last - first
    if span <= 0 or columns <= 1:
        return lambda step: 0
    return lambda step: min(columns - 1, max(0, int((step - first) / span * (columns - 1) + 0.5)))


def _np(column: Sequence[float] | Sequence[int], dtype: type = np.float64) -> np.ndarray:
    """A numpy copy of a history column (one memcpy for an ``array.array``; no view outlives the frame)."""
    return np.array(column, dtype=dtype)


def _column_index(steps: np.ndarray, columns: int) -> np.ndarray:
    """The column of every step (same mapping as ``_column_of``); non-decreasing, as steps are."""
    span = float(steps[-1] - steps[0]) if len(steps) else 0.0
    if span <= 0 or columns <= 1:
        return np.zeros(len(steps), dtype=np.int64)
    return np.clip(((steps - steps[0]) / span * (columns - 1) + 0.5).astype(np.int64), 0, columns - 1)


@dataclass
class _Groups:
    """Consecutive points that share a column: ``columns[i]`` holds points ``starts[i]:ends[i]``."""

    columns: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def _groups(cols: np.ndarray) -> _Groups:
    if not len(cols):
        empty = np.zeros(0, dtype=np.int64)
        return _Groups(empty, empty, empty)
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    ends = np.r_[starts[1:], len(cols)]
    return _Groups(cols[starts], starts, ends)


# -- braille loss chart ------------------------------------------------------------------------
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] within a cell


@dataclass
class Chart:
    """A drawn loss chart: plot rows and y labels (one per row), the x axis with stage ticks, boundary columns,
    whether y is log, per-cell styles."""

    lines: list[str]  # plot rows, each exactly the plot width
    labels: list[str]  # y labels, one per row (blank where none)
    axis: str  # the x-axis rule with a tick under each stage boundary
    ticks: str  # first step, stage names at their boundaries, last step
    boundary_columns: list[int]
    log_scale: bool
    styles: list[list[str]] | None = None  # per cell, where extra curves are drawn (monitor_views)


def loss_chart(history: RunHistory, width: int, height: int, extras: RunExtras | None = None,
               smoothing: float = 0.0) -> Chart:
    """A braille line chart of loss over steps, ``width`` x ``height`` cells, stage starts marked.

    The y scale is logarithmic (loss falls fast early and slowly later; a log axis shows both)
    unless a value is not positive.  Each dot column shows the range of losses that fall in it,
    joined to the next column, so noise reads as a band rather than vanishing in an average.
    """
    width, height = max(1, width), max(1, height)
    dots_x, dots_y = width * 2, height * 4
    grid = [[0] * width for _ in range(height)]
    steps = _np(history.steps)
    losses = _np(history.losses)
    finite = np.isfinite(losses)
    values = losses[finite]
    log_scale = bool(len(values)) and float(values.min()) > 0
    scaled = np.log(values) if log_scale else values
    lo, hi = (float(scaled.min()), float(scaled.max())) if len(values) else (0.0, 1.0)
    if len(values) and extras is not None and len(extras.eval_losses):  # the eval curve fits too
        ev = _np(extras.eval_losses)
        ev = ev[np.isfinite(ev) & (ev > 0)] if log_scale else ev[np.isfinite(ev)]
        if len(ev):
            ev = np.log(ev) if log_scale else ev
            lo, hi = min(lo, float(ev.min())), max(hi, float(ev.max()))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def plot(x: int, y: int) -> None:
        grid[y // 4][x // 2] |= _DOT_BITS[y % 4][x % 2]

    if len(values):
        ys = np.clip(np.rint((hi - scaled) / (hi - lo) * (dots_y - 1)), 0, dots_y - 1).astype(np.int64)
        groups = _groups(_column_index(steps, dots_x)[finite])
        y_min = np.minimum.reduceat(ys, groups.starts)
        y_max = np.maximum.reduceat(ys, groups.starts)
        previous: tuple[int, int] | None = None  # (x, y) where the line left the last column
        for x, first, last, top, bottom in zip(groups.columns.tolist(), ys[groups.starts].tolist(),
                                               ys[groups.ends - 1].tolist(), y_min.tolist(), y_max.tolist()):
            for y in range(top, bottom + 1):
                plot(x, y)
            if previous is not None:  # join to the previous column, interpolating across empty ones
                px, py = previous
                for gx in range(px + 1, x + 1):
                    a = py + (first - py) * (gx - 1 - px) / (x - px)
                    b = py + (first - py) * (gx - px) / (x - px)
                    for y in range(int(round(min(a, b))), int(round(max(a, b))) + 1):
                        plot(gx, y)
            previous = (x, last)

    cell_styles = None
    if len(values) and (smoothing > 0 or (extras is not None and len(extras.eval_steps))):
        # Smoothed and eval curves over the raw one (raw faint while smoothing is on).
        scale = Scale(float(steps[0]), float(steps[-1]), lo, hi, dots_x, dots_y, log_scale)
        layers = [(grid, "class:dim" if smoothing > 0 else "class:chart"),
                  *extra_layers(steps, losses, extras, smoothing, scale, width, height)]
        merged, cell_styles = merge(layers, width, height)
        grid = [[ord(ch) - 0x2800 if ch != " " else 0 for ch in row] for row in merged]
    lines = ["".join(chr(0x2800 + bits) if bits else " " for bits in row) for row in grid]
    boundary_columns = _boundary_columns(history, width)
    for col in boundary_columns:  # a dotted rule where the line is not: the line stays readable
        lines = [line if line[col] != " " else line[:col] + BOUNDARY + line[col + 1 :] for line in lines]

    labels = [""] * height
    if len(values):
        for row in sorted({0, height // 2, height - 1}) if height >= 5 else sorted({0, height - 1}):
            value = hi - (row * 4 + 1.5) / max(1, dots_y - 1) * (hi - lo)  # the middle of the row
            labels[row] = fmt_loss(math.exp(value) if log_scale else value)
    axis = "".join("┴" if c in boundary_columns else "─" for c in range(width))
    return Chart(lines, labels, axis, _ticks(history, width), boundary_columns, log_scale, cell_styles)


def _mark_columns(history: RunHistory, width: int) -> list[tuple[int, StageMark]]:
    if not history.steps or not history.marks:
        return []
    # Between the last step of one stage and the first of the next: on the half step.
    col = _column_of(history.steps[0], history.steps[-1], width * 2)
    return [(min(width - 1, col(mark.step - 0.5) // 2), mark) for mark in history.marks]


def _boundary_columns(history: RunHistory, width: int) -> list[int]:
    return sorted({col for col, _ in _mark_columns(history, width)})


def _ticks(history: RunHistory, width: int) -> str:
    if not history.steps:
        return ""
    row = [" "] * width

    def put(col: int, text: str, force: bool = False) -> None:
        col = max(0, min(col, width - len(text)))
        span = range(max(0, col - 1), min(width, col + len(text) + 1))  # keep a space between labels
        if not force and any(row[i] != " " for i in span):
            return
        for i, ch in enumerate(text[: width - col]):
            row[col + i] = ch

    last = str(history.steps[-1])
    put(width - len(last), last, force=True)
    for col, mark in _mark_columns(history, width):  # stage names first: they matter most
        put(col, mark.stage)
    first_stage = history.stages[0] if history.stages else ""
    put(0, f"{history.steps[0]} {first_stage}".rstrip())
    return "".join(row)


# -- sparkline and phase timeline --------------------------------------------------------------
def _per_column(groups: _Groups, per_group: list[object], width: int) -> list[object | None]:
    """One value per column; an empty column (fewer steps than columns) repeats its left neighbour."""
    out: list[object | None] = [None] * width
    for col, value in zip(groups.columns.tolist(), per_group):
        out[col] = value
    last: object | None = None
    for i, value in enumerate(out):
        if value is None:
            out[i] = last
        last = out[i]
    return out


def sparkline(steps: Sequence[int], values: Sequence[float], width: int) -> str:
    """Column means as ▁..█ over the same x-axis as the chart."""
    if not len(steps) or width <= 0:
        return " " * max(0, width)
    data = _np(values)
    finite = np.isfinite(data)
    if not finite.any():
        return " " * width
    data = data[finite]
    groups = _groups(_column_index(_np(steps), width)[finite])
    means = (np.add.reduceat(data, groups.starts) / (groups.ends - groups.starts)).tolist()
    columns = _per_column(groups, means, width)
    lo, hi = float(data.min()), float(data.max())
    scale = (len(SPARK) - 1) / (hi - lo) if hi > lo else 0.0
    return "".join(" " if v is None else SPARK[int(round((v - lo) * scale)) if scale else 3]  # type: ignore[operator]
                   for v in columns)


def phase_timeline(history: RunHistory, width: int) -> str:
    """One glyph per column: the phase most of its steps were in."""
    if not history.steps or width <= 0:
        return " " * max(0, width)
    phases = _np(history.phase_codes, np.int64)
    groups = _groups(_column_index(_np(history.steps), width))
    kinds = len(PHASES) + 1  # + unknown
    counts = np.add.reduceat(np.eye(kinds, dtype=np.int64)[phases], groups.starts, axis=0)
    glyphs = [PHASE_GLYPHS[PHASES[i]] if i < len(PHASES) else "?" for i in counts.argmax(axis=1).tolist()]
    return "".join(g or " " for g in _per_column(groups, glyphs, width))  # type: ignore[misc]


def phase_legend() -> str:
    """One line naming each phase's glyph (``glyph phase`` pairs, two spaces apart)."""
    return "  ".join(f"{glyph} {phase}" for phase, glyph in PHASE_GLYPHS.items())


# -- runs table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A runs-table column: ``title``, ``width`` in terminal cells, right-aligned when ``right``."""

    title: str
    width: int
    right: bool = False


def _columns(width: int) -> list[Column]:
    fixed = [Column("STATUS", 9), Column("STAGE", 5), Column("STEP", 11, True), Column("LOSS", 7, True),
             Column("PHASE", 7), Column("TOK/S", 6, True), Column("ETA", 7, True)]
    used = 2 + sum(c.width for c in fixed) + len(fixed)  # marker + columns + one space before each
    name_width = max(8, min(40, width - used))
    return [Column("NAME", name_width), *fixed]


def _cell(text: str, column: Column) -> str:
    return fit_text(text, column.width, right=column.right)  # display cells, control chars escaped


def run_row(state: RunState, history: RunHistory | None, width: int) -> list[str]:
    """The cells of one run's row, in column order (unpadded)."""
    step = f"{state.current_step}/{state.total_steps}" if state.total_steps else str(state.current_step)
    rate = fmt_si(state.tokens_per_s) if state.tokens_per_s else "-"
    eta = fmt_duration(eta_seconds(state)) if state.status == "running" else "-"
    name = state.run_name or state.run_id
    if state.alert_count:  # runs with alerts stand out: "!N name" (a lists them)
        name = f"!{state.alert_count} {name}"
    return [name, state.status, state.current_stage or "-", step,
            fmt_loss(state.current_loss), state.current_phase or "-", rate, eta]


def runs_table(runs: Sequence[RunState], history: dict[str, RunHistory], selected: str | None,
               width: int, height: int, empty: str = "no runs yet (start one with: tritterctl start)",
               marked: frozenset[str] | set[str] = frozenset()) -> list[Line]:
    """Header plus one row per run; scrolls to keep the selected row visible within ``height``."""
    columns = _columns(width)
    header = "  " + " ".join(_cell(c.title, c) for c in columns)
    lines: list[Line] = [fit([("class:header", header)], width, "class:header")]
    if not runs:
        lines.append(fit([("class:dim", f"  {empty}")], width))
        return lines[:height]
    rows = max(1, height - 1)
    index = next((i for i, r in enumerate(runs) if r.run_id == selected), len(runs) - 1)
    top = min(max(0, index - rows + 1), max(0, len(runs) - rows))
    for i, state in enumerate(runs[top : top + rows], start=top):
        cells = run_row(state, history.get(state.run_id), width)
        is_selected = i == index
        base = "class:selected" if is_selected else ""
        line: Line = [(base, ("▸" if is_selected else " ") + ("*" if state.run_id in marked else " "))]
        for n, (text, column) in enumerate(zip(cells, columns)):
            style = f"{base} class:status.{state.status}" if n == 1 else base
            line.append((base, "" if n == 0 else " "))
            line.append((style, _cell(text, column)))
        lines.append(fit(line, width, base))
    return lines[:height]


# -- detail view -------------------------------------------------------------------------------
def _stage_table(state: RunState) -> list[str]:
    rows = [f"{'#':>2} {'PRESET':<6} {'PARAMS':>7} {'STEPS':>11} {'TOKENS':>7}  {'EVAL LOSS START → END':<23} STATUS"]
    for s in state.stages:
        steps = f"{s.start_step + 1}-{s.end_step if s.end_step is not None else '…'}"
        evals = f"{fmt_loss(s.eval_loss_start)} → {fmt_loss(s.eval_loss_end)}"
        rows.append(f"{s.index:>2} {s.stage:<6} {fmt_si(s.params):>7} {steps:>11} {fmt_si(s.tokens):>7}  {evals:<23} {stage_status(state, s)}")
    if not state.stages:
        rows.append("   (no stage has started yet)")
    return rows


def _checkpoint_line(state: RunState, width: int) -> str:
    ck = state.last_checkpoint
    if ck is None:
        return "last checkpoint  none yet"
    line = f"last checkpoint  step {ck.step} ({ck.stage}) · {fmt_bytes(ck.bytes)} · {ck.path}"
    return line if len(line) <= width else line.replace(ck.path, ck.path.rsplit("/", 1)[-1])  # the file name


def detail(state: RunState, history: RunHistory | None, width: int, height: int,
           extras: RunExtras | None = None, smoothing: float = 0.0, now: float | None = None) -> list[Line]:
    """The selected run: summary, loss chart (with the eval curve, optionally smoothed), grad norm,
    phases, prediction stats, stages, checkpoint; alerts, system figures and the latest sample
    when there is room for them."""
    history = history or RunHistory()
    title = f"▸ {state.run_name or state.run_id} · {state.run_id} · "
    status_line: Line = [("class:header", title), (f"class:header class:status.{state.status}", state.status)]
    if state.error:
        status_line.append(("class:header class:error", f": {state.error}"))
    eta = fmt_duration(eta_seconds(state))
    mfu = f" · MFU {state.mfu:.1%}" if state.mfu is not None else ""
    status_line.append(("class:header", f" · {fmt_si(state.tokens_per_s)} tok/s{mfu} · ETA {eta}"))
    best = f" · best {fmt_loss(state.best_loss)} @ {state.best_step}" if state.best_step is not None else ""
    progress = (f"step {state.current_step}/{state.total_steps} · stage {state.current_stage or '-'} · "
                f"phase {state.current_phase or '-'} · loss {fmt_loss(state.current_loss)}{best}")
    top: list[Line] = [status_line, [("", progress)]]
    latest_eval = (extras.eval_steps[-1], extras.eval_losses[-1]) if extras is not None and extras.eval_steps else \
        (state.eval_step, state.eval_loss) if state.eval_loss is not None else None  # offline: eval.jsonl
    if latest_eval is not None:
        step_, loss_ = latest_eval
        ppl = math.exp(loss_) if loss_ < 700 else math.inf
        top.append([("class:eval", f"eval {fmt_loss(loss_)} (ppl {ppl:.4g}) @ {step_}"),
                    ("class:dim", " · periodic held-out loss")])
    if (alerts := alert_line(state)) is not None:
        top.append(alerts)
    if state.prepare is not None:  # corpus tokenizing progress, then the data's identity
        top.append([("class:dim", f"data {prepare_line(state.prepare)}")])

    share, error = history.predicted_share, history.mean_prediction_error
    gnorms = _np(history.grad_norms)
    gnorms = gnorms[np.isfinite(gnorms)]
    gnorm_range = f"grad norm {gnorms.min():.3g}–{gnorms.max():.3g}" if len(gnorms) else "grad norm -"
    stages = _stage_table(state)
    bottom: list[Line] = [
        [("class:dim", " " * GUTTER + phase_legend())],
        [("", f"predicted steps {'-' if share is None else f'{share:.0%}'} "
              f"({history.predicted_count}/{len(history)}) · mean prediction error "
              f"{'-' if error is None else f'{error:.4g}'}")],
        [("class:header", stages[0])],
        *[[("", row)] for row in stages[1:]],
        [("", _checkpoint_line(state, width))],
    ]
    plot_width = max(1, width - GUTTER)
    # The system pane, then the latest sample, while the chart keeps at least MONITOR_CHART_ROWS rows.
    fixed = len(top) + 1 + 2 + 2 + len(bottom)
    for section in (system_pane(extras.system if extras else None, now),
                    sample_pane(extras.sample if extras else None, 4)):
        if section and height - fixed - len(section) >= MONITOR_CHART_ROWS:
            bottom.extend(section)
            fixed += len(section)
    # Lines besides the chart rows: top, caption, axis, ticks, gnorm, phase, bottom.
    chart_rows = max(MIN_CHART_ROWS, height - len(top) - 1 - 2 - 2 - len(bottom))
    chart = loss_chart(history, plot_width, chart_rows, extras, smoothing)
    scale = "log scale" if chart.log_scale else "linear scale"
    caption: Line = [("class:dim", f"loss ({scale}) · {gnorm_range} · {BOUNDARY} stage boundary")]
    if extras is not None and len(extras.eval_steps):
        caption.append(("class:eval", " · ━ held-out eval"))
    if smoothing > 0:
        caption.append(("class:smooth", f" · smoothed {smoothing:g} (m)"))
    body: list[Line] = [*top, caption]
    for r, (label, row) in enumerate(zip(chart.labels, chart.lines)):
        tick = "┤" if label else "│"
        cells = chart.styles[r] if chart.styles is not None else None
        body.append([("class:dim", f"{label:>{GUTTER - 1}}{tick}"), *_chart_row(row, cells)])
    body.append([("class:dim", " " * (GUTTER - 1) + "└" + chart.axis)])
    body.append([("class:dim", " " * GUTTER + chart.ticks)])
    body.append([("class:dim", "gnorm".rjust(GUTTER - 1) + " "),
                 ("class:spark", sparkline(history.steps, history.grad_norms, plot_width))])
    body.append([("class:dim", "phase".rjust(GUTTER - 1) + " "), ("class:phase", phase_timeline(history, plot_width))])
    body.extend(bottom)
    return [fit(line, width) for line in body[:height]]


def _chart_row(row: str, cells: list[str] | None = None) -> Line:
    return _group([("class:boundary" if ch == BOUNDARY else (cells[i] if cells and cells[i] else "class:chart"), ch)
                   for i, ch in enumerate(row)])


# -- help, bars, the whole screen --------------------------------------------------------------
def help_box(width: int, offline: bool) -> list[Line]:
    """The ``?`` help overlay as boxed lines (at most ``width`` - 2 cells wide): the keys, the phase legend, and an
    offline note."""
    key_width = max(len(k) for k, _ in KEYS)
    body = [f" {key:<{key_width}}  {text}" for key, text in KEYS]
    body.append("")
    body.append(f" phases  {phase_legend()}")
    if offline:
        body.append(" offline: p, s and c need a running tritterd (--home)")
    inner = min(max(len(line) for line in body) + 1, max(10, width - 4))
    title = " keys "
    box = [[("class:help.border", "┌" + title + "─" * (inner - len(title)) + "┐")]]
    for line in body:
        box.append([("class:help.border", "│"), ("class:help", line[:inner].ljust(inner)), ("class:help.border", "│")])
    box.append([("class:help.border", "└" + "─" * inner + "┘")])
    return box


@dataclass
class Chrome:
    """What the bars say: where the monitor reads from and how that link is doing."""

    source: str  # "live · /var/lib/tritter" or "offline · /path/runs"
    connection: str  # live | catching up … | disconnected — reconnecting | offline …
    connection_ok: bool = True


def title_bar(monitor: Monitor, chrome: Chrome, width: int, now: float | None = None) -> Line:
    """The top bar, exactly ``width`` cells: source, run count, last seq and the clock (``now``: unix seconds,
    default the current time)."""
    clock = time.strftime("%H:%M:%S", time.localtime(now if now is not None else time.time()))
    count = len(monitor.runs)
    left = f" tritter · {chrome.source} · {count} run{'s' if count != 1 else ''}"
    if monitor.last_seq:
        left += f" · seq {monitor.last_seq}"
    if len(left) + len(clock) + 2 > width:  # narrow: the clock goes first
        return fit([("class:title", left)], width, "class:title")
    return fit([("class:title", left.ljust(width - len(clock) - 1) + clock + " ")], width, "class:title")


def status_bar(view: ViewState, chrome: Chrome, width: int) -> Line:
    """The bottom bar, exactly ``width`` cells: the y/n prompt when one is pending, else the link state and the
    latest message; the key hint at the right."""
    hint = "? help  q quit "
    if view.confirm is not None:
        line: Line = [("class:confirm", f" {view.confirm.prompt} [y/n] ")]
    else:
        state_style = "class:status.ok" if chrome.connection_ok else "class:status.bad"
        line = [(f"class:statusbar {state_style}", f" {chrome.connection} ")]
        if view.message:
            line.append(("class:statusbar class:error" if view.message_is_error else "class:statusbar",
                         f"│ {view.message}"))
    used = sum(len(t) for _, t in line)
    pad = max(1, width - used - len(hint))
    line.append(("class:statusbar", " " * pad + hint))
    return fit(line, width, "class:statusbar")


def body(monitor: Monitor, view: ViewState, width: int, height: int, empty: str | None = None) -> list[Line]:
    """The lines between the bars, ``height`` lines of exactly ``width`` cells: the alerts list, the overlay of
    marked runs, the selected run's detail or the runs table, as ``view`` asks.
    """
    runs = monitor.ordered()
    state = monitor.selected(view)
    marked = [r for r in runs if r.run_id in view.marked]
    if view.alerts:
        lines = alerts_view(runs, width, height)
    elif view.overlay and len(marked) >= 2:
        lines = overlay_view(marked, monitor.history, monitor.extras, view.by_tokens, view.smoothing, width, height, GUTTER)
    elif view.detail and state is not None:
        lines = detail(state, monitor.history.get(state.run_id), width, height,
                       monitor.extras.get(state.run_id), view.smoothing)
    else:
        kwargs = {"empty": empty} if empty else {}
        lines = runs_table(runs, monitor.history, view.selected, width, height, marked=view.marked, **kwargs)
        if runs and len(lines) < height - 1:
            lines += [[("", "")], [("class:dim", "  j/k select · d details · p pause/resume · s stop · c checkpoint")]]
    lines = [fit(line, width) for line in lines[:height]]
    return lines + [fit([], width)] * (height - len(lines))


def screen(monitor: Monitor, view: ViewState, chrome: Chrome, width: int, height: int,
           offline: bool = False, empty: str | None = None, now: float | None = None) -> list[Line]:
    """The whole screen, exactly ``height`` lines of ``width`` characters."""
    width, height = max(1, width), max(1, height)
    if height < 3:
        return [status_bar(view, chrome, width)][:height]
    lines = [title_bar(monitor, chrome, width, now), *body(monitor, view, width, height - 2, empty),
             status_bar(view, chrome, width)]
    if view.help:
        box = help_box(width, offline)
        top = max(1, (height - len(box)) // 2)
        left = max(0, (width - len(_chars(box[0]))) // 2)
        lines = overlay(lines, box[: height - 1], top, left)
    return lines
