"""bench/gpu.py: the GPU acceptance bench's code path, run on CPU in CI (and on a GPU when there is one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_gpu

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def run_bench(*args: str, timeout: float) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), *args, "--json"], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)  # ~30 s on a quiet 2-core machine; the shared CI box can be far slower
def test_gpu_bench_runs_its_code_path_on_cpu(tmp_path: Path) -> None:
    report = run_bench("--device", "cpu", "--preset", "tiny", "--quick", "--cache-dir", str(tmp_path), timeout=880)
    tiny = report["presets"]["tiny"]
    assert tiny["loss_finite"] and tiny["loss_falling"], tiny["losses"]
    assert len(tiny["losses"]) == 5 and tiny["tokens_per_step"] == 4 * 2 * 128
    assert tiny["tokens_per_s"] > 0 and 0 < tiny["mfu"] < 1
    assert tiny["peak_bytes"] is None and tiny["predicted_peak_bytes"] > 0  # no allocator peak on CPU
    growth = report["growth"]
    assert (growth["from"], growth["to"]) == ("tiny", "small")
    assert abs(growth["jump"]) < 1e-4  # growth preserves the function (fp32 on CPU)


@requires_gpu
@pytest.mark.timeout(900)
def test_gpu_peak_memory_matches_the_planner() -> None:
    report = run_bench("--preset", "100m", "--growth-to", "500m", "--steps", "3", timeout=880)
    r = report["presets"]["100m"]
    assert r["loss_finite"] and r["loss_falling"]
    assert 0.85 <= r["peak_vs_predicted"] <= 1.15, (r["peak_bytes"], r["predicted_peak_bytes"])
    assert abs(report["growth"]["jump"]) < 0.01
