"""The monitoring views rendered to text: smoothing, eval curve, overlay, alert list, system and
sample panes.  Expected values are worked by hand (see the comments), not read from the renderer."""

from __future__ import annotations

import math

import pytest
from test_tui_render import CHROME, two_runs
from tui_stream import OTHER_ID, RUN_ID

from tritter.clients.tui.extras import RunExtras, debiased_ema
from tritter.clients.tui.model import Monitor, ViewState
from tritter.clients.tui.monitor_keys import next_smoothing
from tritter.clients.tui.monitor_views import bar, system_pane
from tritter.clients.tui.render import plain, screen
from tritter.protocol.events import (
    AlertEvent,
    EvalEvent,
    GpuStats,
    Sample,
    SampleEvent,
    StepEvent,
    SystemEvent,
)


def test_debiased_ema_by_hand() -> None:
    # w = 0.5: m1 = 0.5*0 + 0.5*1 = 0.5, /(1-0.5) = 1.0; m2 = 0.25 + 1.0 = 1.25, /(1-0.25) = 1.6667
    assert debiased_ema([1.0, 2.0], 0.5) == pytest.approx([1.0, 5 / 3])
    assert debiased_ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # no pull towards 0
    assert debiased_ema([1.0, 2.0], 0.0) == [1.0, 2.0]
    assert [next_smoothing(w) for w in (0.0, 0.6, 0.9, 0.99)] == [0.6, 0.9, 0.99, 0.0]


def _step(step: int, stage: str, tokens: int, loss: float = 3.0) -> StepEvent:
    return StepEvent(run_id="r", step=step, loss=loss, gradient_norm=1.0, phase="full", was_predicted=False,
                     prediction_error=None, step_time_ms=1.0, stage=stage, lr=1e-3, tokens=tokens, tokens_per_s=1.0)


def test_tokens_add_up_across_stages_and_a_replay_rewinds() -> None:
    extras = RunExtras()
    for event in (_step(1, "tiny", 100), _step(2, "tiny", 200), _step(3, "small", 50), _step(4, "small", 100)):
        extras.add(event)
    assert list(extras.tokens_total) == [100, 200, 250, 300]  # small's tokens start after tiny's 200
    extras.add(_step(4, "small", 100))  # step 4 again (a resume): replaces, never doubles
    assert list(extras.tokens_total) == [100, 200, 250, 300]


def test_gauges() -> None:
    assert bar(0.5, 10) == "█████░░░░░"
    assert bar(0.04, 10) == "░" * 10  # 0.4 cells round to none
    assert bar(1.7, 4) == "████"  # clipped
    assert bar(None, 3) == "???"


def test_system_pane_nvitop_style() -> None:
    event = SystemEvent(ts=100.0, step=42, cpu_percent=150.0, rss_bytes=1_200_000_000, host_memory_used_bytes=12_000_000_000,
                        host_memory_total_bytes=24_000_000_000,
                        gpus=[GpuStats(index=0, name="NVIDIA H200", utilization_pct=87.0, memory_used_bytes=40_000_000_000,
                                       memory_total_bytes=140_000_000_000, temperature_c=54.0, power_w=350.0)])
    cpu, gpu = plain(system_pane(event, now=103.0)).splitlines()
    assert "RSS 1.2 GB" in cpu and "MEM █████░░░░░ 12.0/24.0 GB" in cpu and "step 42 · " in cpu
    # util 87% -> 8.7 cells -> 9; memory 40/140 = 0.286 -> 2.86 cells -> 3
    assert gpu == "GPU0 █████████░ 87%  MEM ███░░░░░░░ 40.0/140.0 GB  54°C  350 W  NVIDIA H200"
    cpu_only = SystemEvent(step=1, cpu_percent=0.0, rss_bytes=0, host_memory_used_bytes=0, host_memory_total_bytes=0)
    assert len(system_pane(cpu_only)) == 1  # no GPU lines on a CPU run


def _with_monitoring(monitor: Monitor) -> Monitor:
    """two_runs() plus evals every 10 steps (loss 2 + 60/step... by hand below), 2 alerts, a sample, a system event."""
    ts = 1_767_268_900.0
    for step in (10, 20, 30, 40, 50, 60):
        monitor.apply(EvalEvent(run_id=RUN_ID, seq=1000 + step, ts=ts, step=step, stage="small",
                                loss=2.0 + 10.0 / step, perplexity=math.exp(2.0 + 10.0 / step)))
    monitor.apply(AlertEvent(run_id=RUN_ID, seq=1100, ts=ts, level="warning", reason="loss_spike", step=31, value=4.0,
                             threshold=3.0, message="loss 4 is 1.6x its moving average 2.5"))
    monitor.apply(AlertEvent(run_id=RUN_ID, seq=1101, ts=ts + 1, level="critical", reason="divergence", step=55,
                             message="loss moving average stayed up"))
    monitor.apply(SampleEvent(run_id=RUN_ID, seq=1102, ts=ts, step=60, stage="small", max_new_tokens=8, samples=[
        Sample(prompt="It is a truth", greedy=" universally\nknown", sampled="x", temperature=0.8, top_k=50)]))
    monitor.apply(SystemEvent(run_id=RUN_ID, seq=1103, ts=ts, step=60, cpu_percent=100.0, rss_bytes=500_000_000,
                              host_memory_used_bytes=6_000_000_000, host_memory_total_bytes=24_000_000_000))
    return monitor


def test_detail_view_with_eval_curve_smoothing_alerts_system_and_sample() -> None:
    monitor = _with_monitoring(two_runs())
    view = ViewState(selected=RUN_ID, detail=True, smoothing=0.9)
    lines = screen(monitor, view, CHROME, 100, 40, now=0.0)
    out = plain(lines)
    # Eval at step 60: 2 + 10/60 = 2.1667, perplexity e^2.1667 = 8.729
    assert "eval 2.1667 (ppl 8.729) @ 60" in out
    assert "⚠ 2 alerts · last: divergence at step 55 (critical)" in out
    assert "━ held-out eval" in out and "smoothed 0.9 (m)" in out
    assert "CPU " in out and "RSS 0.5 GB" in out and "6.0/24.0 GB" in out
    assert "sample @ step 60" in out and "«It is a truth» universally known" in out
    styles = {style for line in lines for style, _ in line}
    # The raw curve goes faint while smoothing is on; the smoothed and the eval curves have their own.
    assert {"class:eval", "class:smooth", "class:dim"} <= styles
    # Without smoothing there is no smoothed curve (and the raw one is the chart's colour).
    plain_view = plain(screen(monitor, ViewState(selected=RUN_ID, detail=True), CHROME, 100, 40, now=0.0))
    assert "smoothed" not in plain_view and "held-out eval" in plain_view


def test_small_detail_view_keeps_the_chart_and_drops_the_panes() -> None:
    out = plain(screen(_with_monitoring(two_runs()), ViewState(selected=RUN_ID, detail=True), CHROME, 80, 24, now=0.0))
    assert "sample @" not in out and "RSS" not in out  # no room at 80x24: the chart keeps its rows
    assert "eval 2.1667" in out


def test_runs_table_marks_alerts_and_marked_runs() -> None:
    monitor = _with_monitoring(two_runs())
    out = plain(screen(monitor, ViewState(selected=OTHER_ID, marked={RUN_ID}), CHROME, 80, 24, now=0.0))
    row = next(line for line in out.splitlines() if "grow-demo" in line)
    assert row.startswith(" *!2 grow-demo")  # marked (*), 2 alerts (!2)


def test_alert_list_newest_first() -> None:
    monitor = _with_monitoring(two_runs())
    out = plain(screen(monitor, ViewState(alerts=True), CHROME, 100, 24, now=0.0)).splitlines()
    assert "alerts · 2 in all" in out[1]
    rows = [line for line in out if "grow-demo" in line]
    assert [row.split()[2:5] for row in rows] == [["critical", "divergence", "55"], ["warning", "loss_spike", "31"]]


def test_overlay_of_marked_runs_by_step_and_by_tokens() -> None:
    monitor = two_runs()
    view = ViewState(marked={RUN_ID, OTHER_ID}, overlay=True)
    out = plain(screen(monitor, view, CHROME, 100, 30, now=0.0))
    assert "overlay · 2 marked runs · x = step" in out
    # Last losses: grow-demo step 60 = 9e^(-60/25) + 1 = 1.8165; second step 40 = 9e^(-40/25) + 1 = 2.8171
    assert "━━ grow-demo 1.8165" in out and "━━ second 2.8171" in out
    axis = out.splitlines()[-2]
    assert axis.split() == ["1", "60"]  # x from the first step to the last of either run
    view.by_tokens = True
    out = plain(screen(monitor, view, CHROME, 100, 30, now=0.0))
    assert "x = tokens" in out and out.splitlines()[-2].rstrip().endswith("tok")
    # One marked run is not an overlay: the runs table stays.
    view.marked = {RUN_ID}
    assert "overlay" not in plain(screen(monitor, view, CHROME, 100, 30, now=0.0))
