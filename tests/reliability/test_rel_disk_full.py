"""(f) the disk fills up while a checkpoint is written.

HOME/runs (checkpoints, metrics.jsonl, run.json) is a small tmpfs, so the failure is a real
ENOSPC from the kernel; the event log (HOME/events.log) stays on the ordinary disk and remains
writable.  After the first checkpoint a ballast file leaves less free space than one checkpoint
needs, so the next checkpoint write fails.  Expected (issue): the previous checkpoint intact, the
run *paused* with an error naming ENOSPC, and resumable (``tritterctl resume``) once space is
back, with the exact loss curve.  Needs root (mount); skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Daemon, ctl, events
from reliability_helpers import (
    TEST_TIMEOUT_S,
    TINY_EVERY,
    TINY_RUN,
    Follower,
    assert_exact_run,
    reference_losses,
    report,
    start_run,
    wait_done,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

NO_SPACE = ("ENOSPC", "No space left on device")


def try_mount_tmpfs(where: Path, size_mb: int) -> str | None:
    """Mount a tmpfs at ``where``; return why not, or None when mounted."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (CAP_SYS_ADMIN); not available here"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"mount -t tmpfs not permitted here: {result.stderr.strip() or result.returncode}"
    return None


@pytest.fixture(scope="module")
def disk_full() -> Iterator[dict]:
    """Run the scenario once; both tests below judge its observations."""
    began = time.monotonic()
    reference = reference_losses(TINY_RUN)
    base = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    home = base / "home"
    runs = home / "runs"
    runs.mkdir(parents=True)
    why = try_mount_tmpfs(runs, 512)
    if why:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(why)
    daemon = Daemon(home)
    ballast = runs / "ballast"
    try:
        daemon.start()
        run_id = start_run(home, TINY_RUN, "disk-full")
        follower = Follower(home)
        try:
            first = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "checkpoint", timeout=420)
            # Leave half a checkpoint of space: the next checkpoint cannot be written.
            stat = os.statvfs(runs)
            free = stat.f_bavail * stat.f_frsize
            with open(ballast, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, max(0, free - first["bytes"] // 2))
            ended = follower.until(
                lambda e: e.get("run_id") == run_id and e["kind"] == "run" and e["status"] in ("paused", "failed", "completed"),
                timeout=420,
            )
        finally:
            follower.close()
        previous = home / "runs" / run_id / first["path"]
        with open(previous, "rb") as f:
            intact = hashlib.file_digest(f, "sha256").hexdigest() == first["sha256"]
        stray = [p.name for p in (runs / run_id / "checkpoints").iterdir() if not p.name.endswith(".safetensors")]
        later_checkpoints = [e for e in events(home) if e.get("run_id") == run_id and e["kind"] == "checkpoint" and e["step"] > first["step"]]
        status_text = ctl(home, "status", run_id).stdout
        ballast.unlink()  # space is back
        resumed = ctl(home, "resume", run_id, check=False)
        exact_error = None
        if resumed.returncode == 0:
            try:
                wait_done(home, run_id, daemon)
                figures = assert_exact_run(home, run_id, TINY_RUN, reference)
            except AssertionError as error:
                exact_error, figures = str(error), {}
        else:
            figures = {}
        observed = {
            "status": ended["status"], "reason": ended.get("reason", ""), "previous_intact": intact,
            "previous_step": first["step"], "stray_files": stray, "later_checkpoints": len(later_checkpoints),
            "status_text": status_text, "resume_rc": resumed.returncode, "resume_err": resumed.stderr.strip(),
            "exact_error": exact_error, "figures": figures,
        }
        report("f_disk_full", status=ended["status"], reason=ended.get("reason", ""), previous_intact=intact,
               resumed_exactly=exact_error is None and resumed.returncode == 0,
               duration_s=round(time.monotonic() - began, 1), **figures)
        yield observed
    finally:
        daemon.stop()
        subprocess.run(["umount", str(runs)], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_disk_full_keeps_previous_checkpoint_names_enospc_and_resumes_exactly(disk_full: dict) -> None:
    assert disk_full["previous_step"] == TINY_EVERY
    assert disk_full["later_checkpoints"] == 0, "a checkpoint was logged although it could not be written"
    assert disk_full["previous_intact"], "the previous checkpoint was damaged by the failed write"
    assert not disk_full["stray_files"], f"the failed write left files behind: {disk_full['stray_files']}"
    assert any(s in disk_full["reason"] for s in NO_SPACE), f"the error does not name ENOSPC: {disk_full['reason']!r}"
    assert any(s in disk_full["status_text"] for s in NO_SPACE), disk_full["status_text"]
    assert disk_full["resume_rc"] == 0, disk_full["resume_err"]
    assert disk_full["exact_error"] is None, disk_full["exact_error"]


def test_disk_full_pauses_the_run(disk_full: dict) -> None:
    assert disk_full["status"] == "paused", f"run {disk_full['status']}: {disk_full['reason']}"
    assert any(s in disk_full["reason"] for s in NO_SPACE), disk_full["reason"]



def test_stop_while_paused_on_a_full_disk_ends_the_run(home: Path) -> None:
    """``tritterctl stop`` on a run paused by a full disk stops it (the worker exits, no checkpoint).

    HOME/runs is a 2 MB tmpfs, far less than one tiny checkpoint, so the first checkpoint write
    gets a real ENOSPC and the run pauses; stop must end it, not wait for space.
    """
    runs = home / "runs"
    runs.mkdir(parents=True)
    why = try_mount_tmpfs(runs, 2)
    if why:
        pytest.skip(why)
    daemon = Daemon(home, ["--no-recorder"])
    try:
        daemon.start()
        run_id = start_run(home, ("--start", "tiny", "--end", "tiny", "--steps", "3", "--checkpoint-every", "1",
                                  "--no-hybrid"), "stop-when-full")
        follower = Follower(home)
        try:
            paused = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "run" and e["status"] == "paused",
                                    timeout=300)
            assert any(s in paused["reason"] for s in NO_SPACE), paused["reason"]
            ctl(home, "stop", run_id)
            stopped = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "run"
                                     and e["status"] in ("stopped", "failed", "completed"), timeout=120)
        finally:
            follower.close()
        assert stopped["status"] == "stopped" and "disk was full" in stopped["reason"], stopped
        assert ctl(home, "wait", run_id, "--timeout", "60", check=False).returncode != 0  # ended, not completed
        mine = [e for e in events(home) if e.get("run_id") == run_id]
        assert not [e for e in mine if e["kind"] == "checkpoint"], "no checkpoint can have been written"
        steps = [e["step"] for e in mine if e["kind"] == "step"]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) < 3  # it did not train on to the end
    finally:
        daemon.stop()
        subprocess.run(["umount", str(runs)], capture_output=True, timeout=60)
