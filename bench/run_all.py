#!/usr/bin/env python
"""Run every benchmark in ``bench/`` and record each one's JSON with its command, commit and machine.

    .venv/bin/python bench/run_all.py --quick                  # every bench, quick sizes
    .venv/bin/python bench/run_all.py --only bus,planner_peak  # a few, full sizes
    .venv/bin/python bench/tables.py                           # then render docs/ from the results

Each bench runs as a subprocess of this interpreter from the repository root; its last stdout
line must be one JSON object.  ``<out>/<name>.json`` (default ``bench/results/``) is then
``{"bench", "command", "argv", "mode", "commit", "machine", "date", "wall_s", "load_avg",
"exit_status", "result"}`` (a bench may print its JSON and exit 1 for a missed target: recorded).
A bench that times out, is missing, or prints no JSON object as its last stdout line gets one
line on stderr, keeps its previous results file, and makes the exit status 1 after the others.
``gpu`` runs only where ``torch.cuda.is_available()``; elsewhere it is reported as skipped.
The last line printed is one JSON object: per bench its status (ok, failed, skipped) and wall_s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Bench:
    """One recorded benchmark: ``bench/<script>`` with the argv of each mode.

    ``name`` is the results file's stem (``<out>/<name>.json``) and the doc markers' name
    (``<!-- bench:<name>:begin -->``); one script may back several names (different argv).
    """

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    cuda: bool = False  # run only where torch.cuda.is_available()


# The one list of benchmarks and the exact argv each gets.  Keep docs/benchmarks.md's markers and
# bench/tables.py's SPECS in step with it.
BENCHES: tuple[Bench, ...] = (
    Bench("bus", "bus.py", ("--quick", "--json"), ("--json",)),
    Bench("overhead", "overhead.py", ("--quick", "--json"), ("--json",)),
    Bench("stalled_subscriber", "stalled_subscriber.py", ("--quick", "--json"), ("--json",)),
    Bench("hybrid", "hybrid.py", ("--quick", "--json"), ("--json",)),
    Bench("hybrid_syncs", "hybrid.py", ("--syncs", "--quick", "--steps", "40", "--json"), ("--syncs", "--json")),
    Bench("hybrid_state", "hybrid.py", ("--state", "--json"), ("--state", "--json")),
    Bench("hybrid_lean", "hybrid_lean.py", ("--json",), ("--json",)),  # tiny + small: well under 2 minutes
    Bench("growth_study", "growth_study.py", ("--quick", "--jobs", "2", "--json"), ("--jobs", "2", "--json")),
    Bench("grad_ckpt", "grad_ckpt.py", ("--quick", "--json"), ("--json",)),
    Bench("compress", "compress.py", ("--quick", "--json"), ("--json",)),  # small preset (tiny with --quick)
    Bench("compress_tiny", "compress.py", ("--quick", "--json"), ("--preset", "tiny", "--json")),  # few-KB tensors: the worst case
    Bench("compress_memory", "compress_memory.py", ("--threads", "2", "--json"), ("--threads", "2", "--json")),
    Bench("checkpoint_save", "checkpoint_save.py", ("--quick", "--json"), ("--json",)),
    Bench("data", "data.py", ("--quick", "--json"), ("--pairs", "1", "--json")),
    Bench("monitoring", "monitoring.py", ("--quick", "--json"), ("--json",)),
    Bench("planner_peak", "planner_peak.py", ("--batch", "1", "--seq", "256", "--every", "0", "--json"),
          ("--batch", "1", "--seq", "256", "--every", "0", "--json")),
    Bench("planner_peak_every4", "planner_peak.py", ("--batch", "1", "--seq", "256", "--every", "4", "--json"),
          ("--batch", "1", "--seq", "256", "--every", "4", "--json")),
    Bench("planner_peak_b2s512", "planner_peak.py", ("--batch", "2", "--seq", "512", "--every", "0", "--json"),
          ("--batch", "2", "--seq", "512", "--every", "0", "--json")),
    Bench("gpu_cpu", "gpu.py", ("--device", "cpu", "--preset", "tiny", "--quick", "--json"),
          ("--device", "cpu", "--preset", "tiny", "--quick", "--json")),
    Bench("gpu", "gpu.py", ("--quick", "--json"), ("--json",), cuda=True),
    Bench("gpu_eager", "gpu.py", ("--quick", "--no-compile", "--growth-to", "none", "--json"),
          ("--no-compile", "--growth-to", "none", "--json"), cuda=True),  # what torch.compile buys, same micro-batches
)
BY_NAME = {b.name: b for b in BENCHES}


def command_line(bench: Bench, quick: bool) -> list[str]:
    """The argv run for ``bench``: this interpreter (relative to the repo root when inside it), script, flags."""
    exe = Path(sys.executable)
    if exe.is_relative_to(ROOT):
        exe = exe.relative_to(ROOT)
    return [str(exe), f"bench/{bench.script}", *(bench.quick if quick else bench.full)]


def git_commit() -> str:
    """``git rev-parse HEAD``, plus ``-dirty`` when the work tree differs from it; ``unknown`` outside git.

    Read-only: ``--no-optional-locks`` keeps ``git status`` from refreshing the index.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, object]:
    """The machine a result was measured on: CPU model, cores, RAM (GiB), torch, Python, OS."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(), "torch": torch_version,
            "python": platform.python_version(), "os": platform.platform()}


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cuda_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def last_json_line(stdout: str) -> dict | None:
    """The bench's result: its last non-empty stdout line parsed as a JSON object, else None."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def run_one(bench: Bench, quick: bool, out: Path, timeout: float, commit: str) -> dict[str, object]:
    """Run ``bench`` and write ``out/<name>.json``; return ``{"status", "wall_s"[, "error"]}``.

    Errors: never raises for a bench's failure (non-zero exit, timeout, missing script, no JSON
    object on the last stdout line); the status says ``failed`` and ``error`` says why.
    """
    argv = command_line(bench, quick)
    if not (ROOT / "bench" / bench.script).is_file():
        return {"status": "failed", "wall_s": 0.0, "error": f"bench/{bench.script} does not exist"}
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = _load_avg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "wall_s": round(time.perf_counter() - t0, 1), "error": f"timed out after {timeout:.0f} s"}
    wall = round(time.perf_counter() - t0, 1)
    result = last_json_line(proc.stdout)
    if result is None:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        why = f"exit status {proc.returncode}, " if proc.returncode != 0 else ""
        return {"status": "failed", "wall_s": wall, "error": f"{why}no JSON object on the last stdout line; "
                                                               f"stderr: {tail[:300]}"}
    record = {"bench": bench.name, "command": shlex.join(argv), "argv": argv[1:], "mode": "quick" if quick else "full",
              "commit": commit, "machine": machine(), "date": date, "wall_s": wall,
              "load_avg": {"start": load_start, "end": _load_avg()}, "exit_status": proc.returncode, "result": result}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{bench.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    # A bench may print its JSON and exit 1 for a missed target (hybrid.py): recorded, and said.
    return {"status": "ok", "wall_s": wall, **({"exit_status": proc.returncode} if proc.returncode else {})}


def select(only: str | None) -> list[Bench]:
    """The benches named in ``only`` (comma-separated), in BENCHES order; all when None.

    Errors: ValueError naming the unknown names and the known ones.
    """
    if not only:
        return list(BENCHES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown bench {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [b for b in BENCHES if b.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each bench's quick size (see BENCHES)")
    parser.add_argument("--only", metavar="NAME,...", help=f"only these benches ({', '.join(BY_NAME)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per bench (default 1800 with --quick, 14400 without)")
    parser.add_argument("--list", action="store_true", help="print the commands that would run, and exit")
    args = parser.parse_args(argv)
    try:
        chosen = select(args.only)
    except ValueError as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for bench in chosen:
            print(f"{bench.name}: {shlex.join(command_line(bench, args.quick))}{'  (CUDA only)' if bench.cuda else ''}")
        return 0
    timeout = args.timeout or (1800.0 if args.quick else 14400.0)
    commit = git_commit()
    cuda = _cuda_available() if any(b.cuda for b in chosen) else False
    summary: dict[str, dict[str, object]] = {}
    for bench in chosen:
        if bench.cuda and not cuda:
            print(f"{bench.name}: skipped (needs CUDA; torch.cuda.is_available() is False here)", file=sys.stderr)
            summary[bench.name] = {"status": "skipped", "wall_s": 0.0, "error": "no CUDA device"}
            continue
        print(f"{bench.name}: running {shlex.join(command_line(bench, args.quick))}", file=sys.stderr, flush=True)
        outcome = run_one(bench, args.quick, args.out, timeout, commit)
        summary[bench.name] = outcome
        if outcome["status"] == "ok":
            note = f" (exit status {outcome['exit_status']}: a target missed?)" if "exit_status" in outcome else ""
            print(f"{bench.name}: ok in {outcome['wall_s']} s{note} -> {args.out / (bench.name + '.json')}", file=sys.stderr)
        else:
            print(f"{bench.name}: FAILED ({outcome['error']})", file=sys.stderr)
    failed = [n for n, o in summary.items() if o["status"] == "failed"]
    print(json.dumps({"mode": "quick" if args.quick else "full", "commit": commit, "ok": not failed,
                      "failed": failed, "benches": summary}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
