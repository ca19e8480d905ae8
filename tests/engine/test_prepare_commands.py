"""Commands that arrive while a run's corpus is being prepared: stop ends the run before training,
pause waits for the first step (there is no model to save before it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritter.daemon.engine import trainer as trainer_module
from tritter.daemon.engine.trainer import EndRun, Trainer
from tritter.daemon.worker_protocol import Command, Outcome
from tritter.protocol.config import RunConfig
from tritter.protocol.events import PrepareEvent, RunEvent, StepEvent
from tritter.recipe.presets import ModelShape, Preset, TrainSettings

MICRO = Preset("tiny", ModelShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128),
               TrainSettings(batch_size=2, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=0, checkpoint_every=1000))


class Script:
    """Controls that answer polls from a list (then None) and ``wait`` with resume; each poll
    notes the kind of the last event emitted before it."""

    def __init__(self, events: list, *commands: Command) -> None:
        self.events = events
        self.commands = list(commands)
        self.polled_after: list[str] = []

    def poll(self) -> Command | None:
        self.polled_after.append(type(self.events[-1]).__name__ if self.events else "")
        return self.commands.pop(0) if self.commands else None

    def wait(self) -> Command:
        return Command.RESUME


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(trainer_module, "get_preset", lambda name: MICRO)
    monkeypatch.setattr(trainer_module, "EVAL_BATCHES", 1)
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"Line {i} of a small corpus that has to be tokenized first.\n" for i in range(4000)))
    return path


def _config(corpus: Path) -> RunConfig:
    return RunConfig(name="prep", start="tiny", end="tiny", steps=2, seed=1, hybrid=False, corpus=str(corpus), checkpoint_every=1000)


def test_stop_while_preparing_ends_the_run_before_training(tmp_path: Path, corpus: Path) -> None:
    events: list = []
    with pytest.raises(EndRun) as ended:
        Trainer("prep", _config(corpus), tmp_path / "run", events.append, Script(events, Command.STOP), tmp_path / "cache")
    assert ended.value.outcome == Outcome.STOPPED
    assert isinstance(events[0], PrepareEvent)  # the command was seen at a prepare event
    assert isinstance(events[-1], RunEvent) and events[-1].status == "stopped"
    assert not any(isinstance(e, StepEvent) for e in events)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert all(e.run_id == "prep" and e.ts > 0 for e in events)  # the daemon drops an event of no run


def test_pause_while_preparing_takes_effect_before_the_first_step(tmp_path: Path, corpus: Path) -> None:
    events: list = []
    controls = Script(events, Command.PAUSE)
    trainer = Trainer("prep", _config(corpus), tmp_path / "run", events.append, controls, tmp_path / "cache")
    assert controls.polled_after[0] == "PrepareEvent"  # taken while preparing, not at the first step
    assert trainer.run() == Outcome.COMPLETED
    kinds = [(type(e).__name__, getattr(e, "status", "")) for e in events if isinstance(e, (RunEvent, StepEvent))]
    assert kinds[:3] == [("RunEvent", "paused"), ("RunEvent", "resumed"), ("StepEvent", "")], kinds
    assert all(e.run_id == "prep" and e.ts > 0 for e in events)
