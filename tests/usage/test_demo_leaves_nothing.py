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


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


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


def test_the_leftover_check_of_the_readme_scripts_finds_and_ends_a_stray_process() -> None:
    """scripts/test.sh and demo.sh end with ``reap_leftovers`` (scripts/leftovers.sh): a process
    that outlived its parent (reparented to init) is listed, killed, and fails the script."""
    script = ". scripts/leftovers.sh; tag_session check; ( setsid sleep 300 & ); reap_leftovers check.sh"
    dirty = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dirty.returncode == 1 and "sleep 300" in dirty.stderr, dirty.stderr
    pid = int(dirty.stderr.split("\n")[1].split()[0])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:  # SIGKILLed: gone (or a zombie init reaps) at once
        time.sleep(0.05)
    assert not alive(pid), f"the stray process {pid} was not ended"
    clean = subprocess.run(["bash", "-c", ". scripts/leftovers.sh; tag_session check; sleep 0.1; reap_leftovers check.sh"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr
