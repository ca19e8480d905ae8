"""``tritter-compress``: compresses, verifies, removes raw files, prunes, and survives kill -9."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

from ckpt_helpers import synthetic
from conftest import Daemon, ctl, events, tool, wait_until
from tritter.clients.ckpt.compressor import Compressor, CompressSettings
from tritter.formats import codec
from tritter.formats.checkpoints import checkpoint_step
from tritter.protocol.events import CheckpointEvent, RunEvent
from tritter.protocol.home import Layout

RUN = "20260101-000000-abcd"


def _event(home: Path, step: int, data: bytes, seq: int, reason: str = "periodic", stage: str = "tiny") -> CheckpointEvent:
    ckpt_dir = home / "runs" / RUN / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:08d}.safetensors"
    path.write_bytes(data)
    return CheckpointEvent(seq=seq, run_id=RUN, path=f"checkpoints/{path.name}", step=step, stage=stage, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), reason=reason)


def _names(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "runs" / RUN / "checkpoints").iterdir())


def test_keyframes_deltas_and_retention(tmp_path: Path) -> None:
    home = tmp_path / "home"
    c = Compressor(Layout(home), CompressSettings(keep_last=2, keyframe_every=3, threads=1))
    c.handle(RunEvent(seq=1, run_id=RUN, status="started"))
    data, originals, seq = synthetic(0), {}, 2
    for step in range(1, 8):
        reason, stage = ("stage", "tiny") if step == 4 else ("periodic", "tiny" if step < 5 else "small")
        data = synthetic(step, base=data) if step != 5 else synthetic(50)
        originals[step] = data
        c.handle(_event(home, step, data, seq, reason, stage))
        seq += 1
    headers = {checkpoint_step(p): codec.read_header(p) for p in (home / "runs" / RUN / "checkpoints").glob("*.tzst")}
    # 1 keyframe, 2 delta(1), 3 delta(2), 4 stage-final keyframe, 5 new stage keyframe, 6 delta(5), 7 delta(6)
    assert {s: h["chain"] for s, h in headers.items()} == {4: 0, 5: 0, 6: 1, 7: 2}
    # kept: the last 2 (6, 7), the stage-final 4, and 5 as the base of 6 and 7; 1-3 pruned
    assert _names(home) == [f"step-{s:08d}.safetensors.tzst" for s in (4, 5, 6, 7)]
    for step, h in headers.items():
        path = home / "runs" / RUN / "checkpoints" / f"step-{step:08d}.safetensors.tzst"
        assert bytes(codec.read_safetensors_bytes(path)) == originals[step]
        assert h["meta"]["step"] == step
    assert c.compressed == 7
    assert int((home / "compress.cursor").read_text()) == seq - 1


def test_keep_last_keeps_every_file_while_there_are_fewer_than_n(tmp_path: Path) -> None:
    """--keep-last N: after each new checkpoint the run keeps its newest min(N, count) files
    (keyframes only, so no base chain keeps extra ones).  A negative slice start used to keep
    only the newest one or two while a run had fewer than N."""
    for keep_last in (2, 3, 5, None):  # None, the default: the sink prunes nothing (--keep-checkpoints decides)
        home = tmp_path / f"home{keep_last}"
        c = Compressor(Layout(home), CompressSettings(keep_last=keep_last, keyframe_every=1, threads=1))
        c.handle(RunEvent(seq=1, run_id=RUN, status="started"))
        data = synthetic(0)
        for step in range(1, 8):
            data = synthetic(step, base=data)
            c.handle(_event(home, step, data, step + 1))
            expected = list(range(max(1, step - (keep_last or 10**6) + 1), step + 1))
            assert _names(home) == [f"step-{s:08d}.safetensors.tzst" for s in expected], (keep_last, step)


def test_a_deleted_checkpoint_event_is_not_compressed(tmp_path: Path, caplog) -> None:
    """The run's retention announces each removal as a ``checkpoint`` event with status
    ``deleted``: the sink moves its cursor past it and touches nothing (it used to try to
    compress it and log a false error)."""
    home = tmp_path / "home"
    c = Compressor(Layout(home), CompressSettings(threads=1))
    c.handle(RunEvent(seq=1, run_id=RUN, status="started"))
    data = synthetic(0)
    c.handle(_event(home, 1, data, 2))
    kept = _names(home)
    gone = CheckpointEvent(seq=3, run_id=RUN, path="checkpoints/step-00000001.safetensors.tzst", step=1, stage="tiny",
                           bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), reason="retention", status="deleted")
    with caplog.at_level("INFO", logger="tritter-compress"):
        c.handle(gone)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")], caplog.text
    assert _names(home) == kept and c.cursor == 3 and c.compressed == 1


def test_kill_points_lose_nothing_and_redo_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = synthetic(1)
    ev = _event(home, 2, a, 5)
    raw = home / "runs" / RUN / ev.path
    out = raw.with_name(raw.name + ".tzst")
    # killed while writing: a half-written temp file is discarded and the work redone
    Path(str(out) + ".tmp").write_bytes(b"half a file")
    c = Compressor(Layout(home), CompressSettings(keep_last=5))
    c.sweep()
    assert not Path(str(out) + ".tmp").exists()
    assert c.process(ev) == "compressed" and not raw.exists()
    assert bytes(codec.read_safetensors_bytes(out)) == a
    # killed after the rename, before the raw file was removed: nothing is recompressed
    raw.write_bytes(a)
    c2 = Compressor(Layout(home), CompressSettings(keep_last=5))
    assert c2.process(ev) == "done" and not raw.exists() and c2.compressed == 0
    # killed after everything, before the cursor was saved: the event is a no-op
    assert c2.process(ev) == "done"
    # a step saved again (periodic, then stage-final) is left for its own, later event
    ev2 = _event(home, 4, synthetic(2, base=a), 6)
    raw2 = home / "runs" / RUN / ev2.path
    raw2.write_bytes(synthetic(3, base=a))
    assert c2.process(ev2) == "superseded" and raw2.exists()


def _sink(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [tool("tritter-compress"), "--home", str(home), "--keep-last", "1", "--keyframe-every", "2", "--threads", "1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
        )


def test_sink_end_to_end_with_kill9(daemon: Daemon, tmp_path: Path) -> None:
    home = daemon.home
    daemon.start()
    log = tmp_path / "sink.log"
    sink = _sink(home, log)
    try:
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "6", "--checkpoint-every", "2").stdout.strip().split()[-1]
        ckpt_dir = home / "runs" / run_id / "checkpoints"
        wait_until(lambda: "compressed step-" in log.read_text(), 150, "the first compressed checkpoint")
        os.kill(sink.pid, signal.SIGKILL)  # mid-run, possibly mid-file
        sink.wait(timeout=10)
        sink = _sink(home, log)
        ctl(home, "wait", run_id, "--timeout", "150")
        ckpts = [e for e in events(home) if e["kind"] == "checkpoint"]
        last_seq = ckpts[-1]["seq"]

        def caught_up() -> bool:
            cursor = home / "compress.cursor"
            return cursor.exists() and int(cursor.read_text() or 0) >= last_seq
        wait_until(caught_up, 120, "the sink to handle every checkpoint event")
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text, text
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert not [n for n in names if not n.endswith(".safetensors.tzst")], names  # no raw file, no temp file
    final = {}
    for e in ckpts:  # the last event of a step is what that step's file holds
        final[e["step"]] = e
    steps = sorted(final)
    stage_steps = [s for s in steps if final[s]["reason"] == "stage"]
    assert stage_steps, ckpts
    kept = {checkpoint_step(n) for n in names}
    assert set(steps[-1:]) | set(stage_steps) <= kept  # keep-last 1 and the stage-final one
    assert len(kept) < len(steps)  # and retention did prune
    for step in kept:
        path = ckpt_dir / f"step-{step:08d}.safetensors.tzst"
        data = codec.read_safetensors_bytes(path, check_tensors=True)
        assert hashlib.sha256(data).hexdigest() == final[step]["sha256"]
    for step in set(steps) - kept:  # everything else was pruned by retention, not lost
        assert f"retention: removed step-{step:08d}.safetensors.tzst" in text, text
    done = re.findall(r"compressed (step-\d+\.safetensors\.tzst)", text)
    assert len(done) == len(set(done)), done  # no file compressed twice
