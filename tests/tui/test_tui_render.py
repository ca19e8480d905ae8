"""Pure rendering against a recorded event stream: runs table, loss chart, sparkline, timeline, help, fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_stream import OTHER_ID, RUN_ID, stream

from tritter.clients.tui.app import Tui
from tritter.clients.tui.model import Monitor, RunHistory, ViewState
from tritter.clients.tui.render import (
    BOUNDARY,
    KEYS,
    PHASE_GLYPHS,
    SPARK,
    Chrome,
    fmt_bytes,
    fmt_duration,
    fmt_si,
    loss_chart,
    phase_timeline,
    plain,
    runs_table,
    screen,
    sparkline,
)
from tritter.protocol.events import StepEvent

CHROME = Chrome("live · /tmp/home", "● live")
SIZES = [(80, 24), (40, 12), (120, 40), (200, 60), (24, 8)]


def two_runs() -> Monitor:
    """A completed two-stage run, and a second one caught at step 40 of 60."""
    monitor = Monitor()
    for event in stream():
        monitor.apply(event)
    second = stream(run_id=OTHER_ID, name="second", t0=1_767_272_400.0, finish=False)
    for event in second:
        monitor.apply(event)
        if isinstance(event, StepEvent) and event.step == 40:
            break
    return monitor


def text(monitor: Monitor, view: ViewState, width: int = 80, height: int = 24) -> str:
    return plain(screen(monitor, view, CHROME, width, height, now=0.0))


def test_runs_table_columns() -> None:
    monitor = two_runs()
    lines = plain(runs_table(monitor.ordered(), monitor.history, OTHER_ID, 80, 10)).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "STAGE", "STEP", "LOSS", "PHASE", "TOK/S", "ETA"]
    done, running = lines[1].split(), lines[2].split()
    assert done == ["grow-demo", "completed", "small", "60/60", "1.8165", "predict", "4.10k", "-"]
    assert running[:4] == ["▸", "second", "running", "small"]  # the selected row is marked
    # Step 40 of the stream: 9 e^(-40/25) + 1 = 2.81707 (worked by hand, not read back from the monitor).
    assert running[4:] == ["40/60", "2.8171", "warmup", "4.10k", "10s"]


def test_runs_table_scrolls_to_the_selection() -> None:
    monitor = Monitor()
    ids = [f"2026010{i}-000000-0000" for i in range(1, 10)]
    for i, run_id in enumerate(ids):
        monitor.apply(stream(run_id=run_id, name=f"run{i}", t0=1e9 + i)[0])
    lines = plain(runs_table(monitor.ordered(), monitor.history, ids[-1], 80, 4)).splitlines()
    assert len(lines) == 4 and "▸ run8" in lines[-1]
    lines = plain(runs_table(monitor.ordered(), monitor.history, ids[0], 80, 4)).splitlines()
    assert "▸ run0" in lines[1]


def test_chart_draws_the_line_and_marks_the_stage_boundary() -> None:
    history = two_runs().history[RUN_ID]
    width, height = 72, 10
    chart = loss_chart(history, width, height)
    assert len(chart.lines) == height and all(len(line) == width for line in chart.lines)
    # A continuous line: every column has dots (braille) somewhere.
    for col in range(width):
        assert any("\u2800" < line[col] <= "\u28ff" for line in chart.lines), f"gap in column {col}"
    # The boundary sits between step 30 (last tiny) and 31 (first small).
    # Worked by hand: 144 braille dot columns for steps 1..60; step 30.5 sits at dot
    # (30.5 - 1) / 59 * 143 = 71.5 -> 72, i.e. character column 72 // 2 = 36.
    expected = 36
    assert chart.boundary_columns == [expected]
    assert chart.axis[expected] == "┴" and chart.axis.count("┴") == 1
    assert sum(line[expected] == BOUNDARY for line in chart.lines) >= height // 2
    assert chart.ticks[expected : expected + 5] == "small"
    assert chart.ticks.startswith("1 tiny") and chart.ticks.rstrip().endswith("60")
    # Log scale, falling loss: labels from high (top) to low (bottom), and the line starts top-left.
    assert chart.log_scale
    assert float(chart.labels[0]) > float(chart.labels[height // 2]) > float(chart.labels[-1])
    assert chart.lines[0][0] != " " and chart.lines[-1][0] == " "


def test_chart_linear_when_a_loss_is_not_positive_and_survives_nan() -> None:
    history = RunHistory()
    for step, loss in enumerate([3.0, 0.0, float("nan"), -1.0, 2.0], start=1):
        history.add(StepEvent(step=step, loss=loss, gradient_norm=1.0, phase="full", was_predicted=False,
                              prediction_error=None, step_time_ms=1, stage="tiny", lr=1, tokens=1, tokens_per_s=1))
    chart = loss_chart(history, 20, 4)
    assert not chart.log_scale and len(chart.lines) == 4
    empty = loss_chart(RunHistory(), 20, 4)
    assert all(line.strip() == "" for line in empty.lines) and empty.ticks == ""


def test_sparkline_and_phase_timeline() -> None:
    history = two_runs().history[RUN_ID]
    spark = sparkline(history.steps, history.grad_norms, 50)
    assert len(spark) == 50 and SPARK[0] in spark and SPARK[-1] in spark
    assert sparkline([1, 2], [1.0, 1.0], 5) == SPARK[3] * 5  # flat: mid-height, stretched
    timeline = phase_timeline(history, 60)
    assert len(timeline) == 60
    assert set(timeline) == set(PHASE_GLYPHS.values())
    assert timeline.startswith(PHASE_GLYPHS["warmup"] * 10)


def test_detail_view_shows_everything() -> None:
    monitor = two_runs()
    view = ViewState(selected=RUN_ID, detail=True)
    out = text(monitor, view)
    assert "grow-demo · 20260101-120000-abcd · completed" in out
    assert "loss (log scale)" in out and "┴" in out
    assert "predicted steps 37% (22/60) · mean prediction error 0.02" in out
    assert " 0 tiny     1.45M        1-30   61.4k  9.0000 → 7.0000         completed" in out
    assert " 1 small    5.31M       31-60" in out
    assert "last checkpoint  step 60 (small) · 17.4 MB" in out
    assert "gnorm" in out and "phase" in out


@pytest.mark.parametrize("width,height", SIZES)
def test_every_view_fits_the_terminal(width: int, height: int) -> None:
    monitor = two_runs()
    for view in (ViewState(), ViewState(detail=True), ViewState(help=True), ViewState(detail=True, help=True)):
        lines = screen(monitor, view, CHROME, width, height, now=0.0)
        assert len(lines) == height
        assert all(sum(len(t) for _, t in line) == width for line in lines), (view, width)


def test_80x24_list_and_status_bar() -> None:
    out = text(two_runs(), ViewState()).splitlines()
    assert len(out) == 24 and max(map(len, out)) <= 80
    assert out[0].startswith(" tritter · live · /tmp/home · 2 runs · seq ")
    assert out[-1].startswith(" ● live") and out[-1].endswith("? help  q quit")
    disconnected = Chrome("live · /tmp/home", "disconnected — reconnecting", connection_ok=False)
    bar = plain(screen(two_runs(), ViewState(), disconnected, 80, 24))
    assert bar.splitlines()[-1].startswith(" disconnected — reconnecting")


def test_empty_monitor_says_how_to_start() -> None:
    out = text(Monitor(), ViewState(detail=True))
    assert "no runs yet (start one with: tritterctl start)" in out


def test_help_lists_every_bound_key(tmp_path: Path) -> None:
    out = text(two_runs(), ViewState(help=True))
    for key, description in KEYS:
        assert key in out and description in out
    # …and KEYS covers every binding the app really has.
    names = {"down": "↓", "up": "↑", "escape": "Esc", "c-c": "Ctrl-C", "<any>": None}
    tui = Tui(runs_dir=tmp_path)
    for binding in tui.app.key_bindings.bindings:  # type: ignore[union-attr]
        key = binding.keys[0]
        key = getattr(key, "value", key)
        shown = names.get(key, key)
        if shown is not None:
            assert shown in out, f"key {key!r} is bound but not in the help"


def test_confirmation_prompt_replaces_the_status_line() -> None:
    from tritter.clients.tui.model import Confirm

    view = ViewState(confirm=Confirm("Stop run second (x)?", "stop", OTHER_ID))
    assert text(two_runs(), view).splitlines()[-1].startswith(" Stop run second (x)? [y/n]")


def test_formatters() -> None:
    assert fmt_si(903.2) == "903" and fmt_si(4096) == "4.10k" and fmt_si(1_450_624) == "1.45M"
    assert fmt_bytes(17_435_808) == "17.4 MB" and fmt_bytes(12) == "12 B"
    assert [fmt_duration(s) for s in (None, 5, 185, 7300, 90000)] == ["-", "5s", "3m05s", "2h01m", "1d01h"]


def test_mfu_shows_in_the_header_and_in_tritterctl_status_when_a_step_has_it() -> None:
    from tritter.clients.ctl import format_status

    monitor = two_runs()
    view = ViewState(selected=OTHER_ID, detail=True)
    assert "MFU" not in text(monitor, view)  # CPU runs: no MFU
    state = monitor.runs[OTHER_ID]
    assert "MFU" not in format_status(state)
    monitor.apply(StepEvent(run_id=OTHER_ID, ts=1_767_272_500.0, step=41, loss=2.0, gradient_norm=1.0, phase="full",
                            was_predicted=False, prediction_error=None, step_time_ms=500.0, stage="small", lr=1e-3,
                            tokens=2048 * 41, tokens_per_s=4096.0, mfu=0.4123))
    assert "4.10k tok/s · MFU 41.2% · ETA" in text(monitor, view, width=120)
    assert "speed      4096 tokens/s, MFU 41.2%" in format_status(monitor.runs[OTHER_ID])
