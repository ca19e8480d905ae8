"""The real ``tritter-tui`` program in a real terminal (tmux), reading run folders offline: the
monitoring views (eval curve, smoothing, alerts, system and sample panes, overlay) by keystroke.

Set TRITTER_TUI_CAPTURE=DIR to keep the captured panes (docs use them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tool
from tui_stream import OTHER_ID, RUN_ID, stream, write_run_folder

from tritter.clients.monitoring_cli import monitoring_record
from tritter.protocol.events import AlertEvent, EvalEvent, Sample, SampleEvent, StepEvent

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (apt-get install tmux)")


def _runs(runs_dir: Path) -> None:
    events = stream()
    ts = events[-1].ts
    events += [
        AlertEvent(run_id=RUN_ID, seq=900, ts=ts, level="warning", reason="loss_spike", step=31, value=4.0, threshold=3.0,
                   message="loss 4 is 1.6x its moving average 2.5"),
        AlertEvent(run_id=RUN_ID, seq=901, ts=ts, level="critical", reason="divergence", step=55, message="loss EMA stayed up"),
    ]
    folder = write_run_folder(runs_dir, events)
    evals = [EvalEvent(step=s, stage="small", loss=2.0 + 10.0 / s, perplexity=math.exp(2.0 + 10.0 / s), ts=ts) for s in range(10, 61, 10)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(monitoring_record(e)) + "\n" for e in evals))
    sample = SampleEvent(step=60, stage="small", ts=ts, max_new_tokens=8,
                         samples=[Sample(prompt="It is a truth", greedy=" universally known", sampled="x", temperature=0.8, top_k=50)])
    (folder / "samples.jsonl").write_text(json.dumps(monitoring_record(sample)) + "\n")
    other = stream(run_id=OTHER_ID, name="second", t0=events[0].ts + 3600, finish=False)
    cut = next(i for i, e in enumerate(other) if isinstance(e, StepEvent) and e.step == 40)
    write_run_folder(runs_dir, other[: cut + 1])


class Tmux:
    def __init__(self, name: str, command: list[str], width: int, height: int) -> None:
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), *command], check=True)

    def capture(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def until(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pane = self.capture()
            if text in pane:
                return pane
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{self.capture()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_monitoring_views_in_tmux(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    _runs(runs_dir)
    keep = os.environ.get("TRITTER_TUI_CAPTURE")
    session = Tmux(f"tt-{os.getpid()}", [tool("tritter-tui"), "--runs-dir", str(runs_dir)], 100, 42)
    panes: dict[str, str] = {}
    try:
        panes["runs"] = session.until("!2 grow-demo")  # the run with alerts stands out
        session.keys("k", "d")  # select grow-demo (second is the newest), details
        pane = session.until("eval 2.1667 (ppl 8.729) @ 60")
        assert "━ held-out eval" in pane and "⚠ 2 alerts · last: divergence at step 55" in pane
        assert "sample @ step 60" in pane and "«It is a truth» universally known" in pane
        session.keys("m", "m")  # smoothing 0.6 then 0.9
        panes["detail"] = session.until("smoothed 0.9 (m)")
        session.keys("a")
        pane = panes["alerts"] = session.until("alerts · 2 in all")
        rows = [line.split() for line in pane.splitlines() if "grow-demo" in line]
        assert [row[2:5] for row in rows] == [["critical", "divergence", "55"], ["warning", "loss_spike", "31"]]
        session.keys("a", "d", "Space", "j", "Space", "o")  # mark both runs, overlay them
        pane = panes["overlay"] = session.until("overlay · 2 marked runs · x = step")
        assert "━━ grow-demo" in pane and "━━ second" in pane
        session.keys("x")
        panes["overlay-tokens"] = session.until("x = tokens")
        session.keys("o", "?")
        pane = session.until(" keys ")
        for key in ("m", "space", "o", "x", "a"):
            assert any(line.strip("│ ").startswith(key + " ") for line in pane.splitlines()), key
        session.keys("Escape", "q")
    finally:
        session.close()
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name, pane in panes.items():
                (Path(keep) / f"{name}.txt").write_text(pane)
