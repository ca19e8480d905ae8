"""``bash scripts/demo.sh`` (README's first command) leaves no process of ours behind: not the
event follower, not the daemon, its recorder or a worker."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from test_clean_stop import small_corpus

ROOT = Path(__file__).resolve().parents[2]


def carrying(home: Path) -> list[tuple[int, str]]:
    """Processes whose environment has TRITTER_HOME=home (everything the demo starts inherits it,
    also once reparented to init)."""
    needle = b"TRITTER_HOME=" + os.fsencode(home)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.mark.timeout(900)
def test_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    corpus = small_corpus(tmp_path / "corpus.txt")
    env = {**os.environ, "TRITTER_HOME": str(home), "TRITTER_DEMO_SKIP_SETUP": "1"}
    demo = subprocess.run(["bash", "scripts/demo.sh", "--end", "tiny", "--steps", "2", "--corpus", str(corpus)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=800, start_new_session=True)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "completed" in demo.stdout and "results:" in demo.stdout
    deadline = time.monotonic() + 10  # a process already on its way out may need a moment to be reaped
    while carrying(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = carrying(home)
    for pid, _ in left:  # do not leave them for the next test either
        os.kill(pid, 9)
    assert not left, f"the demo left these running: {left}"
    assert "processes left behind" not in demo.stderr
