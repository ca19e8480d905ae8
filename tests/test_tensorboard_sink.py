"""tritter-tensorboard driven by hand: what it writes reads back in TensorBoard, whatever the timing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tritter.clients import tensorboard as tb
from tritter.protocol.events import AnyEvent, RunEvent, StepEvent, SystemEvent
from tritter.protocol.home import Layout


def _step(seq: int, step: int, loss: float) -> StepEvent:
    return StepEvent(seq=seq, ts=1e9 + seq, run_id="r", step=step, loss=loss, gradient_norm=1.0, phase="full",
                     was_predicted=False, prediction_error=None, step_time_ms=10.0, stage="tiny", lr=1e-3,
                     tokens=64 * step, tokens_per_s=100.0)


def _losses(logdir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars("train/loss")]


def _feed(home: Path, events: list[AnyEvent]) -> None:
    """Run a TensorBoardSink over ``events`` under ``home``, saving its progress, then close it."""

    async def feed() -> None:
        sink = tb.TensorBoardSink(Layout(home))
        await sink.start()
        for event in events:
            await sink.on_event(event)
            sink.cursor = event.seq
        await asyncio.to_thread(sink.save_progress)
        await sink.close()

    asyncio.run(feed())


class _FrozenClock:
    """tensorboardX names an event file by the second: every file of this test is opened in one."""

    @staticmethod
    def time() -> float:
        return 1_700_000_000.0


def test_a_writer_reopened_in_the_same_second_keeps_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tensorboardX.event_file_writer.time", _FrozenClock)
    events: list[AnyEvent] = [
        _step(1, 1, 4.0), _step(2, 2, 3.5),
        RunEvent(seq=3, ts=1e9 + 3, run_id="r", status="completed"),  # closes the run's writer ...
        SystemEvent(seq=4, ts=1e9 + 4, run_id="r", step=2, cpu_percent=50.0, rss_bytes=1, host_memory_used_bytes=1,
                    host_memory_total_bytes=2),  # ... and a late event of the run opens another
    ]

    _feed(tmp_path, events)
    files = sorted((tmp_path / "tensorboard" / "r").glob("events.out.tfevents.*"))
    assert len(files) == 2 and len({f.name for f in files}) == 2
    assert _losses(tmp_path / "tensorboard" / "r") == [(1, 4.0), (2, 3.5)]


def test_the_committed_size_holds_every_event_the_saved_seq_counts(tmp_path: Path) -> None:
    """A restart cuts each file back to its committed size and resumes after the saved seq: every
    event up to that seq must lie inside the committed bytes, or it is lost for good."""
    steps = 500

    async def feed() -> tuple[Path, int]:
        sink = tb.TensorBoardSink(Layout(tmp_path))
        await sink.start()
        for seq in range(1, steps + 1):
            await sink.on_event(_step(seq, seq, 10.0 - seq / 100))
            sink.cursor = seq
        await asyncio.to_thread(sink.save_progress)
        entry = sink.writers["r"]
        committed = sink.state.files[entry.path.relative_to(sink.logdir).as_posix()]
        snapshot = tmp_path / "committed" / "r"
        snapshot.mkdir(parents=True)
        (snapshot / entry.path.name).write_bytes(entry.path.read_bytes()[:committed])  # what a restart keeps
        await sink.close()
        return snapshot, committed

    snapshot, committed = asyncio.run(feed())
    assert committed > 0
    assert [s for s, _ in _losses(snapshot)] == list(range(1, steps + 1))


def test_mfu_is_a_scalar_only_for_steps_that_carry_it(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    gpu_step = _step(2, 2, 3.5)
    gpu_step.mfu = 0.41
    events: list[AnyEvent] = [_step(1, 1, 4.0), gpu_step]

    _feed(tmp_path, events)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "r"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(s.step, round(s.value, 4)) for s in acc.Scalars("train/mfu")] == [(2, 0.41)]
