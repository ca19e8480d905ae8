"""Monitoring views of the TUI: extra curves on the loss chart (smoothed, eval), the overlay of
marked runs, the alert list, and the detail view's system and sample panes.

Pure functions of the view-model, like render.py: sizes in, lines of exactly that width out.
Braille cells: 2 x 4 dots each (U+2800 + bits); a cell shared by several curves takes the style of
the one drawn last, in priority order (eval over smoothed over raw).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritter.clients.tui.extras import RunExtras, debiased_ema
from tritter.protocol.events import SampleEvent, SystemEvent
from tritter.protocol.state import RunState

Fragment = tuple[str, str]
Line = list[Fragment]
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] within a cell
RUN_STYLES: tuple[str, ...] = ("class:run0", "class:run1", "class:run2", "class:run3", "class:run4", "class:run5")
BAR_FULL, BAR_EMPTY = "█", "░"


# -- plotting onto a dot grid ------------------------------------------------------------------------
@dataclass
class Scale:
    """Maps data to dot coordinates: x in [x0, x1] -> 0..dots_x-1, y (log if ``log``) in [lo, hi] -> dots_y-1..0."""

    x0: float
    x1: float
    lo: float
    hi: float
    dots_x: int
    dots_y: int
    log: bool

    def xs(self, x: np.ndarray) -> np.ndarray:
        """Dot columns (int64, 0..dots_x-1, rounded and clipped) of the x values ``x``; all 0 for a zero span."""
        span = self.x1 - self.x0
        if span <= 0 or self.dots_x <= 1:
            return np.zeros(len(x), dtype=np.int64)
        return np.clip(((x - self.x0) / span * (self.dots_x - 1) + 0.5).astype(np.int64), 0, self.dots_x - 1)

    def ys(self, y: np.ndarray) -> np.ndarray:
        """Dot rows (int64, 0 = top .. dots_y-1, clipped) of the y values ``y`` (log scale when ``log``)."""
        v = np.log(y) if self.log else y
        return np.clip(np.rint((self.hi - v) / (self.hi - self.lo) * (self.dots_y - 1)), 0, self.dots_y - 1).astype(np.int64)


def scale_for(series: Sequence[tuple[np.ndarray, np.ndarray]], dots_x: int, dots_y: int) -> Scale | None:
    """One scale covering every finite point of ``series`` [(x, y)]; log y when all y > 0.  None if empty."""
    xs = [x[np.isfinite(y)] for x, y in series]
    ys = [y[np.isfinite(y)] for _, y in series]
    if not any(len(y) for y in ys):
        return None
    allx, ally = np.concatenate(xs), np.concatenate(ys)
    log = bool(float(ally.min()) > 0)
    v = np.log(ally) if log else ally
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return Scale(float(allx.min()), float(allx.max()), lo, hi, dots_x, dots_y, log)


def plot_line(grid: list[list[int]], scale: Scale, x: np.ndarray, y: np.ndarray) -> None:
    """Draw ``y`` over ``x`` (x non-decreasing) as a connected line, one mean per dot column."""
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if not len(x):
        return
    cols = scale.xs(x.astype(np.float64))
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    means = np.add.reduceat(y, starts) / np.diff(np.r_[starts, len(y)])
    rows = scale.ys(means)
    previous: tuple[int, int] | None = None
    for cx, cy in zip(cols[starts].tolist(), rows.tolist()):
        if previous is None:
            _dot(grid, cx, cy)
        else:
            px, py = previous
            steps = max(abs(cx - px), abs(cy - py), 1)
            for i in range(steps + 1):  # straight segment between the two column means
                _dot(grid, round(px + (cx - px) * i / steps), round(py + (cy - py) * i / steps))
        previous = (cx, cy)


def _dot(grid: list[list[int]], x: int, y: int) -> None:
    if 0 <= y // 4 < len(grid) and 0 <= x // 2 < len(grid[0]):
        grid[y // 4][x // 2] |= _DOT_BITS[y % 4][x % 2]


def empty_grid(width: int, height: int) -> list[list[int]]:
    """A ``height`` x ``width`` (cells) braille dot grid with no dot set (one int bit mask per cell)."""
    return [[0] * width for _ in range(height)]


def merge(layers: Sequence[tuple[list[list[int]], str]], width: int, height: int) -> tuple[list[str], list[list[str]]]:
    """Stack dot grids (lowest priority first): the braille text and each cell's style."""
    text = [[0] * width for _ in range(height)]
    styles = [[""] * width for _ in range(height)]
    for grid, style in layers:
        for r in range(height):
            row = grid[r]
            for c in range(width):
                if row[c]:
                    text[r][c] |= row[c]
                    styles[r][c] = style
    return ["".join(chr(0x2800 + b) if b else " " for b in row) for row in text], styles


def styled(row: str, styles: list[str], default: str) -> Line:
    """One chart row as fragments (runs of equal style grouped)."""
    out: Line = []
    for ch, style in zip(row, styles):
        style = style or default
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
    return out


# -- the detail chart's extra curves -----------------------------------------------------------------
def extra_layers(steps: np.ndarray, losses: np.ndarray, extras: RunExtras | None, smoothing: float,
                 scale: Scale, width: int, height: int) -> list[tuple[list[list[int]], str]]:
    """Layers over the raw loss chart: the debiased-EMA curve (``smoothing`` > 0) and the eval curve."""
    layers: list[tuple[list[list[int]], str]] = []
    if smoothing > 0 and len(steps):
        grid = empty_grid(width, height)
        plot_line(grid, scale, steps.astype(np.float64), np.asarray(debiased_ema(losses.tolist(), smoothing)))
        layers.append((grid, "class:smooth"))
    if extras is not None and len(extras.eval_steps):
        grid = empty_grid(width, height)
        plot_line(grid, scale, np.asarray(extras.eval_steps, dtype=np.float64), np.asarray(extras.eval_losses))
        layers.append((grid, "class:eval"))
    return layers


# -- overlay of marked runs ---------------------------------------------------------------------------
def overlay_view(runs: Sequence[RunState], histories: dict, extras: dict[str, RunExtras], by_tokens: bool,
                 smoothing: float, width: int, height: int, gutter: int = 8) -> list[Line]:
    """Loss curves of ``runs`` (2+) on one chart, aligned by global step or by tokens trained."""
    axis = "tokens" if by_tokens else "step"
    series: list[tuple[np.ndarray, np.ndarray]] = []
    for run in runs:
        history = histories.get(run.run_id)
        steps = np.array(history.steps, dtype=np.float64) if history is not None else np.zeros(0)
        losses = np.array(history.losses, dtype=np.float64) if history is not None else np.zeros(0)
        if smoothing > 0:
            losses = np.asarray(debiased_ema(losses.tolist(), smoothing), dtype=np.float64)
        if by_tokens:
            extra = extras.get(run.run_id)
            tokens = np.array(extra.tokens_total, dtype=np.float64) if extra is not None else np.zeros(0)
            n = min(len(tokens), len(losses))
            steps, losses = tokens[:n], losses[:n]
        series.append((steps, losses))
    lines: list[Line] = [[("class:header", f"overlay · {len(runs)} marked runs · x = {axis} (x toggles) · "
                                           f"smoothing {smoothing:g} (m) · o closes")]]
    legend: Line = []
    for i, (run, (_, ys)) in enumerate(zip(runs, series)):
        last = next((float(v) for v in ys[::-1] if math.isfinite(v)), None)
        legend.append((RUN_STYLES[i % len(RUN_STYLES)], f"━━ {run.run_name or run.run_id}"))
        legend.append(("", f" {'-' if last is None else f'{last:.4f}'}   "))
    lines.append(legend)
    plot_w, rows = max(1, width - gutter), max(3, height - len(lines) - 2)
    scale = scale_for(series, plot_w * 2, rows * 4)
    if scale is None:
        return lines + [[("class:dim", "  no steps yet in the marked runs")]]
    layers = []
    for i, (x, y) in enumerate(series):
        grid = empty_grid(plot_w, rows)
        plot_line(grid, scale, x, y)
        layers.append((grid, RUN_STYLES[i % len(RUN_STYLES)]))
    text, styles = merge(layers, plot_w, rows)
    for r, (row, row_styles) in enumerate(zip(text, styles)):
        label = ""
        if r in (0, rows - 1):
            v = scale.hi - (r * 4 + 1.5) / max(1, scale.dots_y - 1) * (scale.hi - scale.lo)
            label = f"{math.exp(v) if scale.log else v:.4g}"
        lines.append([("class:dim", f"{label:>{gutter - 1}}{'┤' if label else '│'}"), *styled(row, row_styles, "")])
    lines.append([("class:dim", " " * (gutter - 1) + "└" + "─" * plot_w)])
    left, right = _fmt_x(scale.x0, by_tokens), _fmt_x(scale.x1, by_tokens)
    lines.append([("class:dim", " " * gutter + left + right.rjust(max(1, plot_w - len(left))))])
    return lines


def _fmt_x(value: float, tokens: bool) -> str:
    if not tokens:
        return f"{value:.0f}"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit} tok"
    return f"{value:.0f} tok"


# -- alerts -------------------------------------------------------------------------------------------
def alerts_view(runs: Sequence[RunState], width: int, height: int) -> list[Line]:
    """Every run's recent alerts, newest first: time, run, level, reason, step, message."""
    rows = sorted(((a, r) for r in runs for a in r.alerts), key=lambda pair: pair[0].seq, reverse=True)
    total = sum(r.alert_count for r in runs)
    lines: list[Line] = [[("class:header", f"alerts · {total} in all · newest first · a closes")],
                         [("class:header", f"{'TIME':<8} {'RUN':<20} {'LEVEL':<8} {'REASON':<19} {'STEP':>7}  MESSAGE")]]
    if not rows:
        lines.append([("class:dim", "  no alerts")])
    for alert, run in rows[: max(0, height - 2)]:
        when = time.strftime("%H:%M:%S", time.localtime(alert.ts)) if alert.ts else "-"
        name = (run.run_name or run.run_id)[:20]
        lines.append([("", f"{when:<8} {name:<20} "), (f"class:alert.{alert.level}", f"{alert.level:<8}"),
                      ("", f" {alert.reason:<19} {alert.step:>7}  {alert.message}")])
    return lines


def alert_line(state: RunState) -> Line | None:
    """The detail view's one-line alert summary, None without alerts."""
    if not state.alerts:
        return None
    last = state.alerts[-1]
    return [(f"class:alert.{last.level}", f"⚠ {state.alert_count} alert{'s' if state.alert_count != 1 else ''}"),
            ("", f" · last: {last.reason} at step {last.step} ({last.level}) {last.message} · a lists them")]


# -- system and sample panes ---------------------------------------------------------------------------
def bar(fraction: float | None, cells: int) -> str:
    """``[████░░░░]``-style gauge of ``fraction`` (clipped to 0..1) in ``cells`` cells, rounded to the nearest."""
    if fraction is None or not math.isfinite(fraction):
        return "?" * cells
    filled = int(round(max(0.0, min(1.0, fraction)) * cells))
    return BAR_FULL * filled + BAR_EMPTY * (cells - filled)


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.1f}"


def system_pane(system: SystemEvent | None, now: float | None = None) -> list[Line]:
    """nvitop-style lines: process CPU and memory, host memory, then one line per GPU."""
    if system is None:
        return [[("class:dim", "system   no figures (live only: the worker reports about every 10 s)")]]
    age = f" · {time.strftime('%H:%M:%S', time.localtime(system.ts))}" if system.ts else ""
    host = system.host_memory_used_bytes / system.host_memory_total_bytes if system.host_memory_total_bytes else None
    lines: list[Line] = [[
        ("class:dim", "CPU "), ("class:gauge", bar(system.cpu_percent / 100 / max(1, _cores()), 10)),
        ("", f" {system.cpu_percent:5.0f}%  RSS {_gb(system.rss_bytes)} GB  MEM "),
        ("class:gauge", bar(host, 10)),
        ("", f" {_gb(system.host_memory_used_bytes)}/{_gb(system.host_memory_total_bytes)} GB"),
        ("class:dim", f"  step {system.step}{age}"),
    ]]
    for gpu in system.gpus:
        used, total = gpu.memory_used_bytes, gpu.memory_total_bytes
        util = None if gpu.utilization_pct is None else gpu.utilization_pct / 100
        lines.append([
            ("class:dim", f"GPU{gpu.index} "), ("class:gauge", bar(util, 10)),
            ("", f" {'-' if gpu.utilization_pct is None else f'{gpu.utilization_pct:.0f}'}%  MEM "),
            ("class:gauge", bar(used / total if used is not None and total else None, 10)),
            ("", f" {_gb(used)}/{_gb(total)} GB"
                 + (f"  {gpu.temperature_c:.0f}°C" if gpu.temperature_c is not None else "")
                 + (f"  {gpu.power_w:.0f} W" if gpu.power_w is not None else "") + f"  {gpu.name}"),
        ])
    return lines


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def sample_pane(sample: SampleEvent | None, rows: int) -> list[Line]:
    """The latest sample: a heading and one line per prompt, ``prompt → greedy continuation``."""
    if sample is None or rows <= 0:
        return []
    lines: list[Line] = [[("class:dim", f"sample @ step {sample.step} (greedy; T={sample.samples[0].temperature:g} "
                                        f"sampled in tritterctl events --kind sample)" if sample.samples else
                           f"sample @ step {sample.step}")]]
    for s in sample.samples[: max(0, rows - 1)]:
        text = " ".join(s.greedy.split()) or "⏎" * min(3, s.greedy.count("\n"))
        lines.append([("class:dim", "  «"), ("", " ".join(s.prompt.split())), ("class:dim", "» "), ("class:sample", text)])
    return lines
