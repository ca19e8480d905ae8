"""--nproc 2 on CPU (torchrun + gloo): one event stream from rank 0, exact resume with 2 ranks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Daemon, children_of, cmdline, ctl, events, follow_until, wait_for_metrics

from tritter.recipe.presets import get_preset

RUN = ["start", "--start", "tiny", "--end", "tiny", "--steps", "8", "--checkpoint-every", "3", "--nproc", "2",
       "--no-hybrid", "--seed", "3"]


@pytest.mark.timeout(2400)  # two 8-step runs on 2 ranks each, each wait bounded at 900 s (load, not speed)
def test_two_ranks_train_and_resume_exactly_after_kill9(daemon: Daemon, home: Path) -> None:
    daemon.start()
    reference = ctl(home, *RUN, "--name", "ddp-ref").stdout.strip()
    assert ctl(home, "wait", reference, "--timeout", "900", check=False).returncode == 0, daemon.stderr()
    ref_events = [e for e in events(home) if e.get("run_id") == reference]
    assert [e["step"] for e in ref_events if e["kind"] == "step"] == list(range(1, 9))  # once, from rank 0 only
    assert ref_events[-1]["kind"] == "run" and ref_events[-1]["status"] == "completed"
    first = next(e for e in ref_events if e["kind"] == "step")
    tiny = get_preset("tiny").train
    assert first["tokens"] == 2 * tiny.batch_size * tiny.seq_len  # one global batch: the preset's on each rank

    run_id = ctl(home, *RUN, "--name", "ddp-crash").stdout.strip()
    # Kill once the step-3 checkpoint is logged: checkpoints are written in the background and
    # logged when durable, which can be a step or two after the step they hold.
    follow_until(home, lambda e: e["kind"] == "checkpoint" and e["run_id"] == run_id and e["step"] >= 3, timeout=600)
    daemon.kill9()  # torchrun and both ranks go down with it
    daemon.start()
    assert ctl(home, "wait", run_id, "--timeout", "900", check=False).returncode == 0, daemon.stderr()
    mine = [e for e in events(home) if e.get("run_id") == run_id]
    assert [e["step"] for e in mine if e["kind"] == "step"] == list(range(1, 9))
    # It resumes from the last checkpoint logged before the kill: 3, or 6 when that one landed first.
    resumed = next(i for i, e in enumerate(mine) if e["kind"] == "run" and e["status"] == "resumed")
    logged = [e["step"] for e in mine[:resumed] if e["kind"] == "checkpoint"]
    assert logged and logged[-1] in (3, 6)
    assert [e["resume_step"] for e in mine if e["kind"] == "run" and e["status"] == "resumed"] == [logged[-1]]
    expected = [r["loss"] for r in wait_for_metrics(home, reference, 8)]
    got = [r["loss"] for r in wait_for_metrics(home, run_id, 8)]
    assert max(abs(a - b) for a, b in zip(expected, got)) <= 1e-5
    # Every rank exits once the run is done (no DDP teardown hang left behind).
    deadline = time.monotonic() + 60
    while any("torch.distributed.run" in cmdline(p) for p in children_of(daemon.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any("torch.distributed.run" in cmdline(p) for p in children_of(daemon.pid))
