"""Figures that reproduce (issue 19): docs/ tables are rendered from bench/results, and a
deterministic bench figure re-computes to exactly its recorded value.

The recorded values come from earlier runs of ``bench/run_all.py`` (``bench/results/*.json``), so
they are outside the code under test.  Everything here runs in seconds: no bench is re-run whole.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
# Each planner_peak result's planner side is integer arithmetic on the preset's shape: exact anywhere.
PLANNER_RESULTS = ("planner_peak", "planner_peak_every4", "planner_peak_b2s512")


def bench_module(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "tables.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_docs_tables_are_the_render_of_the_recorded_results() -> None:
    proc = tables("--check")
    assert proc.returncode == 0, proc.stderr
    assert "blocks checked" in proc.stdout
    # benchmarks.md carries generated blocks (not only typed tables), one per planner result at least.
    text = DOC.read_text()
    for name in PLANNER_RESULTS:
        assert f"<!-- bench:{name}:begin -->" in text


def test_growth_doc_is_the_render_of_the_recorded_study(tmp_path: Path) -> None:
    study = [sys.executable, str(ROOT / "bench" / "growth_study.py"), "--from", str(RESULTS / "growth_study.json")]
    proc = subprocess.run([*study, "--doc", str(ROOT / "docs" / "growth.md"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # A typed-over figure is caught, in one line.
    doc = tmp_path / "growth.md"
    text = (ROOT / "docs" / "growth.md").read_text()
    best = json.loads((RESULTS / "growth_study.json").read_text())["result"]["best_flops_to_target"]
    assert f"{best:.3f}" in text
    doc.write_text(text.replace(f"{best:.3f}", f"{best - 0.1:.3f}"))
    proc = subprocess.run([*study, "--doc", str(doc), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "differs" in proc.stderr


def test_check_catches_a_typed_figure_and_a_changed_result(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    recorded = json.loads((RESULTS / "planner_peak.json").read_text())["result"]["predicted_bytes"]
    text = DOC.read_text()
    typed = f"{recorded:,}"
    assert typed in text
    doc.write_text(text.replace(typed, f"{recorded + 1:,}", 1))  # a figure typed over in the doc
    assert tables("--check", "--results", str(results), str(doc)).returncode == 1
    doc.write_text(text)
    assert tables("--check", "--results", str(results), str(doc)).returncode == 0
    record = json.loads((results / "planner_peak.json").read_text())
    record["result"]["predicted_bytes"] += 1  # the bench re-run with a different figure, docs not re-rendered
    (results / "planner_peak.json").write_text(json.dumps(record))
    proc = tables("--check", "--results", str(results), str(doc))
    assert proc.returncode == 1
    assert "out of date" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", PLANNER_RESULTS)
def test_planner_bytes_recompute_exactly_as_recorded(name: str) -> None:
    record = json.loads((RESULTS / f"{name}.json").read_text())
    declared = bench_module("run_all").BY_NAME[name]
    # The recorded run is the command run_all declares for this name (quick or full).
    assert tuple(record["argv"][1:]) in (declared.quick, declared.full), record["command"]
    result = record["result"]
    again = bench_module("planner_peak").planned(result["preset"], result["batch"], result["seq"], result["every"])
    assert again == {key: result[key] for key in ("predicted_bytes", "activations_bytes", "transient_bytes")}
