"""Training speed with a stalled subscriber: a reader that stops reading (SIGSTOP) vs one that reads.

A real ``tritterd --home <tmp>`` trains one long ``tiny`` run (no checkpoints inside the timed
windows).  Two ``tritterctl events --follow --json`` readers are subscribed; one of them is the
"stalled" reader.  Windows of ``--window`` seconds follow each other, in this order per repeat:

* ``base``: both readers read;
* ``stalled``: the stalled reader is stopped with SIGSTOP (it reads nothing; its socket fills);
* ``control``: an A/A control, both readers read but an unrelated ``sleep`` process is stopped
  instead, so the same signal traffic happens with nothing stalled.

Per-step time is the ``step_time_ms`` of the step events whose ``ts`` falls in a window; the
figures are the medians per kind and ``ratio`` = stalled / base, ``control_ratio`` = control /
base (what the machine's own noise gives; a stalled reader costs nothing when ``ratio`` is
inside the spread of ``control_ratio``).  The tests assert only what a stall cannot change
(tests/reliability/test_rel_stalled_subscriber.py).

Usage: ``python bench/stalled_subscriber.py [--quick] [--window S] [--repeats N] [--json]``;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
KINDS = ("base", "stalled", "control")


def tool(name: str) -> str:
    """The console script ``name`` next to this interpreter (the venv's), else from PATH."""
    path = BIN / name
    return str(path) if path.exists() else name


def log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def ctl(home: Path, *args: str, timeout: float = 120) -> str:
    """Run ``tritterctl --home HOME ARGS``; its stdout. RuntimeError on a non-zero exit."""
    done = subprocess.run([tool("tritterctl"), "--home", str(home), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"tritterctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def step_events(home: Path, run_id: str) -> list[dict[str, Any]]:
    """Every step event of ``run_id`` in the daemon's log (dicts with ``ts`` and ``step_time_ms``)."""
    lines = ctl(home, "events", "--json").splitlines()
    return [e for e in map(json.loads, lines) if e.get("run_id") == run_id and e["kind"] == "step"]


def measure(home: Path, window_s: float, repeats: int, quiet: bool) -> dict[str, Any]:
    """Start the run and the readers, time the windows; per-kind median step times (ms) and ratios."""
    run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "1000000", "--no-hybrid",
                 "--checkpoint-every", "1000000", "--name", "stall-bench").strip()
    follow = [tool("tritterctl"), "--home", str(home), "events", "--follow", "--json"]
    readers = [subprocess.Popen(follow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    control = subprocess.Popen(["sleep", "100000"])
    windows: list[tuple[str, float, float]] = []
    try:
        deadline = time.monotonic() + 600
        while len(step_events(home, run_id)) < 3:  # warm: past the first steps and the eval
            if time.monotonic() > deadline:
                raise RuntimeError("the run did not start training within 600 s")
            time.sleep(1.0)
        for rep in range(repeats):
            for kind in KINDS:
                stopped = {"stalled": readers[1], "control": control}.get(kind)
                if stopped is not None:
                    os.kill(stopped.pid, signal.SIGSTOP)
                began = time.time()
                time.sleep(window_s)
                windows.append((kind, began, time.time()))
                if stopped is not None:
                    os.kill(stopped.pid, signal.SIGCONT)
                log(f"repeat {rep + 1}/{repeats}: {kind} window done", quiet)
        steps = step_events(home, run_id)
    finally:
        for proc in (*readers, control):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
        ctl(home, "stop", run_id)
    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind, began, ended in windows:
        per_kind[kind] += [e["step_time_ms"] for e in steps if began <= e["ts"] < ended]
    medians = {k: statistics.median(v) if v else None for k, v in per_kind.items()}
    ratio = lambda k: round(medians[k] / medians["base"], 3) if medians[k] and medians["base"] else None  # noqa: E731
    return {
        "window_s": window_s,
        "repeats": repeats,
        "steps": {k: len(v) for k, v in per_kind.items()},
        "median_step_ms": {k: round(v, 1) if v else None for k, v in medians.items()},
        "ratio": ratio("stalled"),
        "control_ratio": ratio("control"),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the daemon in a temporary home, print the summary and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat of 15 s windows (a smoke run)")
    parser.add_argument("--window", type=float, default=None, help="seconds per window (default 40; --quick 15)")
    parser.add_argument("--repeats", type=int, default=None, help="base/stalled/control rounds (default 3; --quick 1)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    window = args.window or (15.0 if args.quick else 40.0)
    repeats = args.repeats or (1 if args.quick else 3)
    base = Path(tempfile.mkdtemp(prefix="tt-stall-", dir="/tmp"))
    home = base / "home"
    home.mkdir()
    with open(base / "tritterd.stderr", "wb") as stderr:
        daemon = subprocess.Popen([tool("tritterd"), "--home", str(home)], stdout=subprocess.DEVNULL, stderr=stderr,
                                  stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ctl(home, "runs", timeout=10)
                break
            except RuntimeError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise
                time.sleep(0.2)
        result = measure(home, window, repeats, args.json)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
    if not args.json:
        m = result["median_step_ms"]
        print(f"median step: base {m['base']} ms, reader stopped {m['stalled']} ms, control {m['control']} ms; "
              f"ratio {result['ratio']} (A/A control {result['control_ratio']})")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
