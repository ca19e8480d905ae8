"""The monitor's view-model: folding events, step history, rewinds, and the offline run-folder loader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tui_stream import OTHER_ID, RUN_ID, STEPS_PER_STAGE, T0, stream, write_run_folder

from tritter.clients.tui.model import Monitor, RunsDirSource, StageMark, ViewState, load_runs_dir
from tritter.recipe.eta import eta_seconds
from tritter.protocol.events import RunEvent, StepEvent


def folded(events: list) -> Monitor:
    monitor = Monitor()
    for event in events:
        monitor.apply(event)
    return monitor


def test_apply_folds_the_stream_and_keeps_the_history() -> None:
    events = stream()
    monitor = folded(events)
    # Worked by hand from tui_stream.stream(): 2 stages x 30 steps, loss = 9 e^(-step/25) + 1
    # (falling, so the best is the last), phases per step-in-stage (30 % 4 == 2: predict),
    # 11 predicted steps per stage, 0.5 s apart from T0, 2,048 tokens per step.
    assert list(monitor.runs) == [RUN_ID]
    state = monitor.runs[RUN_ID]
    last_loss = 9.0 * math.exp(-60 / 25) + 1.0  # 1.81646...
    assert (state.run_name, state.status, state.current_stage, state.current_step) == ("grow-demo", "completed", "small", 60)
    assert (state.current_phase, state.total_forward, state.predicted_steps, state.total_backward) == ("predict", 60, 22, 38)
    assert state.current_loss == pytest.approx(last_loss) and state.best_loss == pytest.approx(last_loss)
    assert state.best_step == 60 and state.tokens_per_s == 4096.0
    assert state.started == T0 and state.updated == T0 + 30.0
    assert monitor.last_seq == len(events) == events[-1].seq

    history = monitor.history[RUN_ID]
    assert list(history.steps) == list(range(1, 2 * STEPS_PER_STAGE + 1))
    predicted = [e for e in events if isinstance(e, StepEvent) and e.was_predicted]
    assert history.predicted_count == len(predicted) == 22
    assert history.predicted_share == pytest.approx(22 / 60)
    assert history.mean_prediction_error == pytest.approx(0.02)
    assert history.marks == [StageMark(31, "small")]
    assert [s.phase for s in history.spans[:4]] == ["warmup", "full", "predict", "correct"]
    assert history.spans[0].first_step == 1 and history.spans[0].last_step == 10

    state = monitor.runs[RUN_ID]
    assert state.status == "completed"
    assert [(s.stage, s.eval_loss_start, s.eval_loss_end) for s in state.stages] == [("tiny", 9.0, 7.0), ("small", 6.5, 4.5)]
    assert state.last_checkpoint is not None and state.last_checkpoint.step == 60


def test_events_before_a_run_started_are_ignored() -> None:
    monitor = Monitor()
    step = next(e for e in stream() if isinstance(e, StepEvent))
    monitor.apply(step)  # a client that missed the run event: nothing to attach it to
    assert monitor.runs == {} and monitor.history == {}


def test_a_replayed_step_rewinds_the_history() -> None:
    """After a crash the run resumes from its last checkpoint and repeats steps: no duplicates."""
    steps = [e for e in stream() if isinstance(e, StepEvent)]
    monitor = folded([stream()[0], *steps[:25]])
    monitor.apply(RunEvent(run_id=RUN_ID, ts=2e9, seq=1000, status="resumed", resume_step=20))
    for event in steps[20:30]:
        monitor.apply(event)
    history = monitor.history[RUN_ID]
    assert list(history.steps) == list(range(1, 31))
    assert history.predicted_count == sum(e.was_predicted for e in steps[:30])
    assert len(history.spans) == len({(s.phase, s.first_step) for s in history.spans})


def test_selection_defaults_to_the_newest_run_and_stays_on_it() -> None:
    monitor = folded([*stream(), *stream(run_id=OTHER_ID, name="second", t0=1_767_272_400.0, finish=False)])
    view = ViewState()
    assert monitor.selected(view).run_id == OTHER_ID  # type: ignore[union-attr]
    monitor.move(view, -1)
    assert view.selected == RUN_ID
    monitor.move(view, -5)  # clamps
    assert view.selected == RUN_ID
    monitor.move(view, +5)
    assert view.selected == OTHER_ID


def test_eta_uses_the_recent_pace() -> None:
    events = stream(finish=False)
    cut = next(i for i, e in enumerate(events) if isinstance(e, StepEvent) and e.step == 40)
    monitor = folded(events[: cut + 1])
    state = monitor.runs[RUN_ID]
    assert state.status == "running" and state.total_steps == 60
    assert eta_seconds(state) == pytest.approx(20 * 0.5)
    state.status = "paused"
    assert eta_seconds(state) is None


# -- offline ---------------------------------------------------------------------------------
def test_offline_loader_reads_run_json_and_metrics(tmp_path: Path) -> None:
    write_run_folder(tmp_path, stream())
    monitor, _ = load_runs_dir(tmp_path)
    state = monitor.runs[RUN_ID]
    assert state.run_name == "grow-demo" and state.status == "completed"
    history = monitor.history[RUN_ID]
    assert len(history) == 60 and history.marks == [StageMark(31, "small")]
    assert history.predicted_count == 22
    assert math.isclose(history.losses[-1], state.current_loss or 0.0)


def test_offline_torn_last_line_waits_for_the_rest(tmp_path: Path) -> None:
    folder = write_run_folder(tmp_path, stream(), torn_tail=True)
    monitor, source = load_runs_dir(tmp_path)
    assert len(monitor.history[RUN_ID]) == 59  # the half line is not taken, nor counted as bad
    assert source.folders[RUN_ID].bad_lines == 0
    assert source.poll(monitor) is False  # nothing new

    metrics = folder / "metrics.jsonl"
    text = metrics.read_text()
    full = write_run_folder(tmp_path / "full", stream()).joinpath("metrics.jsonl").read_text()
    metrics.write_text(text + full[len(text) :])  # the recorder finishes its write
    assert source.poll(monitor) is True
    history = monitor.history[RUN_ID]
    assert list(history.steps) == list(range(1, 61))
    assert monitor.runs[RUN_ID].current_step == 60


def test_offline_follows_growth_and_tolerates_junk(tmp_path: Path) -> None:
    events = stream(finish=False)
    cut = next(i for i, e in enumerate(events) if isinstance(e, StepEvent) and e.step == 10)
    folder = write_run_folder(tmp_path, events[: cut + 1])
    monitor, source = load_runs_dir(tmp_path)
    assert len(monitor.history[RUN_ID]) == 10

    rest = write_run_folder(tmp_path / "all", events).joinpath("metrics.jsonl").read_text().splitlines(True)[10:20]
    with (folder / "metrics.jsonl").open("a") as handle:
        handle.write("not json at all\n")
        handle.writelines(rest)
    assert source.poll(monitor)
    assert monitor.history[RUN_ID].last_step == 20
    assert source.folders[RUN_ID].bad_lines == 1
    assert monitor.runs[RUN_ID].current_step == 20  # run.json lags; the metrics are newer

    (folder / "run.json").write_text('{"run_id": "x", "trunc')  # caught mid-rewrite
    source.poll(monitor)
    assert RUN_ID in source.problems and monitor.runs[RUN_ID].run_name == "grow-demo"


def test_offline_metrics_without_run_json(tmp_path: Path) -> None:
    folder = write_run_folder(tmp_path, stream())
    (folder / "run.json").unlink()
    (tmp_path / "empty-dir").mkdir()
    monitor = Monitor()
    RunsDirSource(tmp_path).poll(monitor)
    assert set(monitor.runs) == {RUN_ID}
    assert monitor.runs[RUN_ID].current_step == 60
