"""The daemon's GPU count (no torch): device nodes and CUDA_VISIBLE_DEVICES as the runtime reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritter.daemon.gpus import visible_gpu_count


@pytest.fixture()
def dev(tmp_path: Path) -> Path:
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    return tmp_path


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, 3), ("", 0), ("0", 1), ("2,0", 2), ("0,1,7,2", 2), ("1,foo,2", 1), ("GPU-8d1a,GPU-77aa", 2), ("0,1,2,3", 3)],
)
def test_visible_gpu_count(dev: Path, visible: str | None, expected: int) -> None:
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpu_count(env, dev) == expected


def test_no_driver(tmp_path: Path) -> None:
    assert visible_gpu_count({}, tmp_path / "missing") == 0
