"""What a stage shows: an unfinished stage of a run that is not training shows the run's status."""

from __future__ import annotations

import pytest

from tritter.protocol.config import RunConfig
from tritter.protocol.state import RunState, StageState, stage_status


@pytest.mark.parametrize(
    ("run_status", "stage", "shown"),
    [("running", "running", "running"), ("failed", "running", "failed"), ("stopped", "running", "stopped"),
     ("paused", "running", "paused"), ("failed", "completed", "completed"), ("completed", "completed", "completed")],
)
def test_stage_status(run_status: str, stage: str, shown: str) -> None:
    run = RunState(run_id="r", run_name="n", status=run_status, config=RunConfig())
    assert stage_status(run, StageState(stage="tiny", index=0, status=stage)) == shown
