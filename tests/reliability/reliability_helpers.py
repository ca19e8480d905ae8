"""Shared pieces of the reliability suite (tests/reliability/): run shapes, the reference
loss curves, exactly-once assertions, process helpers and the figures report.

Modes
-----
* CI (default): tiny presets, few steps, few kill points; the suite is bounded.
* ``TRITTER_RELIABILITY_LONG=1``: more steps per stage, more seeded kill points,
  a 60 s stalled subscriber, 50,000 fuzzed control messages.

Figures
-------
When ``TRITTER_RELIABILITY_REPORT=/path/file.jsonl`` is set, every test appends one JSON line
with its figures (kill points, recoveries, messages fuzzed, speed ratio, duration).
``python tests/reliability/render_report.py FILE`` turns that file into the table kept in
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
import time
from pathlib import Path

from conftest import Daemon, EventStream, children_of, cmdline, ctl, events, read_metrics

LONG = os.environ.get("TRITTER_RELIABILITY_LONG", "") not in ("", "0")
MODE = "long" if LONG else "ci"
SEED = int(os.environ.get("TRITTER_RELIABILITY_SEED", "20261125"))
LOSS_TOLERANCE = 1e-5
WAIT_S = 900 if LONG else 420  # bounded waits for one run to finish (slow shared CI cores)
# Per-test ceiling (pytest-timeout; the project default of 300 s is for unit-sized tests).
TEST_TIMEOUT_S = 3600 if LONG else 1500

# Run shapes.  GROWTH crosses tiny -> small (stage growth); TINY stays on tiny (cheaper:
# small checkpoints are ~150 MB each).
GROWTH_STEPS = 8 if LONG else 4
GROWTH_EVERY = 2
GROWTH_RUN = (
    "--start", "tiny", "--end", "small", "--steps", str(GROWTH_STEPS),
    "--checkpoint-every", str(GROWTH_EVERY), "--seed", "5",
)
TINY_STEPS = 16 if LONG else 8
TINY_EVERY = 2
TINY_RUN = (
    "--start", "tiny", "--end", "tiny", "--steps", str(TINY_STEPS),
    "--checkpoint-every", str(TINY_EVERY), "--seed", "5",
)


def total_steps(run: tuple[str, ...]) -> int:
    steps = int(run[run.index("--steps") + 1])
    return steps * (2 if run[run.index("--end") + 1] == "small" else 1)


# -- report ---------------------------------------------------------------------------------
def report(test: str, **figures: object) -> None:
    """Append this test's figures to $TRITTER_RELIABILITY_REPORT (one JSON line), if set."""
    line = json.dumps({"test": test, "mode": MODE, "seed": SEED, **figures}, sort_keys=True)
    print(f"RELIABILITY {line}")
    path = os.environ.get("TRITTER_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


# -- runs -------------------------------------------------------------------------------------
def start_run(home: Path, run: tuple[str, ...], name: str) -> str:
    return ctl(home, "start", *run, "--name", name).stdout.strip()


def wait_done(home: Path, run_id: str, daemon: Daemon | None = None) -> None:
    done = ctl(home, "wait", run_id, "--timeout", str(WAIT_S), check=False)
    assert done.returncode == 0, done.stdout + done.stderr + (daemon.stderr()[-4000:] if daemon else "")


def head_seq(home: Path) -> int:
    evs = events(home)
    return evs[-1]["seq"] if evs else 0


_REFERENCES: dict[tuple[str, ...], list[float]] = {}


def reference_losses(run: tuple[str, ...]) -> list[float]:
    """The loss curve of an uninterrupted run of ``run`` (same seed), computed once per session."""
    if run not in _REFERENCES:
        base = Path(tempfile.mkdtemp(prefix="tt-ref-", dir="/tmp"))
        home = base / "home"
        daemon = Daemon(home, ["--no-recorder"]).start()
        try:
            run_id = start_run(home, run, "reference")
            wait_done(home, run_id, daemon)
            steps = [e for e in events(home) if e["kind"] == "step" and e["run_id"] == run_id]
            assert [e["step"] for e in steps] == list(range(1, total_steps(run) + 1))
            _REFERENCES[run] = [e["loss"] for e in steps]
        finally:
            daemon.stop()
            shutil.rmtree(base, ignore_errors=True)
    return _REFERENCES[run]


def assert_contiguous(evs: list[dict]) -> None:
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, len(seqs) + 1)), f"event seqs must be 1..N with no gap or duplicate: {seqs}"


def assert_exact_run(home: Path, run_id: str, run: tuple[str, ...], reference: list[float]) -> dict:
    """Log contiguous; each step once in the log and in metrics.jsonl; losses equal the reference."""
    n = total_steps(run)
    evs = events(home)
    assert_contiguous(evs)
    logged = [e for e in evs if e.get("run_id") == run_id and e["kind"] == "step"]
    assert [e["step"] for e in logged] == list(range(1, n + 1)), "each step exactly once in the log"
    rows = wait_for_rows(home, run_id, n)
    assert [r["step"] for r in rows] == list(range(1, n + 1)), "each step exactly once in metrics.jsonl"
    worst = 0.0
    for step, ref, ev, row in zip(range(1, n + 1), reference, logged, rows):
        delta = max(abs(ref - ev["loss"]), abs(ref - row["loss"]))
        worst = max(worst, delta)
        assert delta <= LOSS_TOLERANCE, f"step {step}: reference {ref} vs log {ev['loss']} / metrics {row['loss']}"
    return {"events": len(evs), "steps": n, "max_loss_delta": worst}


def wait_for_rows(home: Path, run_id: str, steps: int, timeout: float = 120.0) -> list[dict]:
    """metrics.jsonl once the recorder has (asynchronously) written ``steps`` lines."""
    path = home / "runs" / run_id / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            rows = read_metrics(home, run_id)
            if len(rows) >= steps:
                return rows
        time.sleep(0.2)
    return rows  # the caller's assertion shows what is there


# -- processes ---------------------------------------------------------------------------------
def worker_pid(daemon: Daemon, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in children_of(daemon.pid) if "tritter.daemon.worker_main" in cmdline(p)]
        if len(found) == 1:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no single worker child of tritterd {daemon.pid}")


Follower = EventStream  # one long-lived reader for a whole scenario (no respawn per wait)


# -- the event log file (docs/eventlog.md) -----------------------------------------------------
_HEADER = struct.Struct(">II")
MAGIC_LEN = 8


def log_records(path: Path) -> list[tuple[int, int, dict]]:
    """(offset, total record length, decoded event) of every well-formed record of events.log."""
    import msgspec

    data = path.read_bytes()
    out = []
    pos = MAGIC_LEN
    while pos + _HEADER.size <= len(data):
        length, _ = _HEADER.unpack_from(data, pos)
        if pos + _HEADER.size + length > len(data):
            break
        out.append((pos, _HEADER.size + length, msgspec.msgpack.decode(data[pos + _HEADER.size : pos + _HEADER.size + length])))
        pos += _HEADER.size + length
    return out


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def seeded(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")
