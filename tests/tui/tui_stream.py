"""A recorded event stream for the monitor's tests, built from the real protocol structs.

Two stages (tiny -> small), 60 steps: warmup, full, then predict/correct, a periodic checkpoint,
and the loss falling with a jump at the growth step (where the chart must mark the boundary).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec

from tritter.protocol.config import RunConfig
from tritter.protocol.events import (
    AnyEvent,
    CheckpointEvent,
    PhaseEvent,
    RunEvent,
    StageEvent,
    StepEvent,
    metrics_record,
)
from tritter.protocol.state import RunState, fold

RUN_ID = "20260101-120000-abcd"
OTHER_ID = "20260101-130000-beef"
STEPS_PER_STAGE = 30
T0 = 1_767_268_800.0


def phase_of(step_in_stage: int) -> str:
    if step_in_stage <= 10:
        return "warmup"
    if step_in_stage <= 16:
        return "full"
    return "correct" if step_in_stage % 4 == 0 else "predict"


def stream(run_id: str = RUN_ID, name: str = "grow-demo", steps: int = STEPS_PER_STAGE,
           stages: tuple[str, ...] = ("tiny", "small"), finish: bool = True, t0: float = T0) -> list[AnyEvent]:
    config = RunConfig(name=name, start=stages[0], end=stages[-1], steps=steps, checkpoint_every=20)
    events: list[AnyEvent] = [RunEvent(run_id=run_id, ts=t0, status="started", run_name=name, config=config)]
    ts, step = t0, 0
    params = {"tiny": 1_450_624, "small": 5_310_720}
    for index, stage in enumerate(stages):
        events.append(StageEvent(run_id=run_id, ts=ts, status="started", stage=stage, index=index, step=step,
                                 params=params.get(stage, 10**8), eval_loss=9.0 - 2.5 * index,
                                 grown_from=stages[index - 1] if index else None))
        phase = ""
        for k in range(1, steps + 1):
            step += 1
            ts += 0.5
            now = phase_of(k)
            if now != phase:
                events.append(PhaseEvent(run_id=run_id, ts=ts, phase=now, step=step, stage=stage))  # type: ignore[arg-type]
                phase = now
            loss = 9.0 * math.exp(-step / 25) + 1.0 + (0.8 if index and k <= 2 else 0.0)
            predicted = now == "predict"
            events.append(StepEvent(
                run_id=run_id, ts=ts, step=step, loss=loss, gradient_norm=1.0 + 0.5 * math.sin(step / 3),
                phase=now, was_predicted=predicted, prediction_error=0.02 if predicted else None,  # type: ignore[arg-type]
                step_time_ms=500.0, stage=stage, lr=1e-3, tokens=2048 * step, tokens_per_s=4096.0))
            if step % 20 == 0:
                events.append(CheckpointEvent(run_id=run_id, ts=ts, path=f"checkpoints/step-{step:08d}.safetensors",
                                              step=step, stage=stage, bytes=17_435_808, sha256="0" * 64))
        if finish or index < len(stages) - 1:
            events.append(StageEvent(run_id=run_id, ts=ts, status="completed", stage=stage, index=index, step=step,
                                     params=params.get(stage, 10**8), tokens=2048 * steps,
                                     eval_loss=7.0 - 2.5 * index, export_path=f"export/{stage}"))
    if finish:
        events.append(RunEvent(run_id=run_id, ts=ts, status="completed", run_name=name))
    for seq, event in enumerate(events, start=1):
        event.seq = seq
    return events


def write_run_folder(runs_dir: Path, events: list[AnyEvent], torn_tail: bool = False) -> Path:
    """What the daemon and the recorder leave on disk: run.json (the fold) and metrics.jsonl."""
    runs: dict[str, RunState] = {}
    for event in events:
        fold(runs, event)
    (state,) = runs.values()
    folder = runs_dir / state.run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    lines = [json.dumps(metrics_record(e)) for e in events if isinstance(e, StepEvent)]
    text = "\n".join(lines) + "\n"
    if torn_tail:  # the recorder caught mid-write: the last line is only half there
        text = "".join(line + "\n" for line in lines[:-1]) + lines[-1][: len(lines[-1]) // 2]
    (folder / "metrics.jsonl").write_text(text)
    return folder
