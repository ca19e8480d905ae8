"""A clean stop (SIGTERM) while a run trains: the log and run.json say the run was interrupted
(and from which checkpoint it resumes) for readers without a daemon; the next start resumes it
with a ``resumed`` event; the supervised recorder is not restarted once shutdown has begun."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from conftest import Daemon, EventStream, cmdline, ctl
from tritter.daemon.eventlog import EventLog
from tritter.protocol.home import Layout


def small_corpus(path: Path) -> Path:
    """~60k tokens of text: enough for a tiny run, quick to tokenize."""
    rng = random.Random(0)
    words = "the a of and to in is was he she it that for on with as his her at by".split()
    path.write_text(" ".join(rng.choice(words) for _ in range(60_000)))
    return path


def ours(home: Path) -> list[int]:
    """Processes whose command line names this home (daemon, recorder, worker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(home) in cmdline(int(entry.name)) and int(entry.name) != os.getpid():
            out.append(int(entry.name))
    return out


@pytest.mark.timeout(900)
def test_sigterm_records_interrupted_and_the_next_start_resumes(home: Path, tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path / "corpus.txt")
    daemon = Daemon(home).start()
    try:
        run_id = ctl(home, "start", "--end", "tiny", "--steps", "200", "--checkpoint-every", "2",
                     "--corpus", str(corpus), "--name", "clean-stop").stdout.strip()
        stream = EventStream(home)
        try:
            checkpoint = stream.until(lambda e: e["kind"] == "checkpoint" and e["run_id"] == run_id, timeout=600)
        finally:
            stream.close()
        # SIGTERM to the whole process group, as Ctrl-C or systemd's stop does: the recorder and
        # the worker get it too, while the daemon is still shutting down.
        os.killpg(daemon.pid, signal.SIGTERM)
        assert daemon.process is not None and daemon.process.wait(timeout=300) == 0, daemon.stderr()[-3000:]
        log_text = daemon.stderr()
        assert "restarting" not in log_text, log_text[-3000:]
        assert log_text.count("recorder started") == 1, log_text[-3000:]
        deadline = time.monotonic() + 10  # children end with the daemon (they may take a moment to be reaped)
        while ours(home) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not ours(home), [cmdline(p) for p in ours(home)]

        log = EventLog(Layout(home).log)
        try:
            run_events = [e for e in log.replay() if e.run_id == run_id and e.kind == "run"]
        finally:
            log.close()
        last = run_events[-1]
        assert last.status == "interrupted", [e.status for e in run_events]
        assert last.resume_step is not None and last.resume_step >= checkpoint["step"]
        state = json.loads((home / "runs" / run_id / "run.json").read_text())
        assert state["status"] == "interrupted"  # what tritter-tui --runs-dir and scripts read

        head = len(run_events)
        daemon.start()
        stream = EventStream(home)
        try:
            resumed = stream.until(lambda e: e["kind"] == "run" and e["run_id"] == run_id and e["status"] == "resumed",
                                   timeout=120)
        finally:
            stream.close()
        assert resumed["resume_step"] == last.resume_step and head >= 2
        assert json.loads(ctl(home, "status", run_id, "--json").stdout)["status"] == "running"
    finally:
        daemon.stop()
