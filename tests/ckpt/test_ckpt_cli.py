"""``tritter-ckpt``: compress / decompress / verify / info through the real console script."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from ckpt_helpers import flip_byte, synthetic
from conftest import tool
from tritter.clients.ckpt.cli import main


def ckpt(*args: object) -> subprocess.CompletedProcess[str]:
    """Run ``tritter-ckpt ARGS`` in-process (the console script's own ``main``): fast, same code path."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def test_console_script(files: tuple[Path, Path]) -> None:
    first, _ = files
    r = subprocess.run([tool("tritter-ckpt"), "compress", str(first)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([tool("tritter-ckpt"), "verify", str(first) + ".tzst"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    r = subprocess.run([tool("tritter-ckpt"), "decompress", str(first)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    a = synthetic(1)
    (tmp_path / "step-00000002.safetensors").write_bytes(a)
    (tmp_path / "step-00000004.safetensors").write_bytes(synthetic(2, base=a))
    return tmp_path / "step-00000002.safetensors", tmp_path / "step-00000004.safetensors"


def test_roundtrip_verify_info(files: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = files
    r = ckpt("compress", first)
    assert r.returncode == 0, r.stderr
    assert "full" in r.stdout
    r = ckpt("compress", second, "--delta-from", first.with_name(first.name + ".tzst"))
    assert r.returncode == 0, r.stderr
    assert "delta of step-00000002.safetensors" in r.stdout
    packed = second.with_name(second.name + ".tzst")
    r = ckpt("verify", packed)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert ckpt("verify", second).returncode == 0
    info = json.loads(ckpt("info", packed, "--json").stdout)
    assert info["base"]["name"] == first.name and info["chain"] == 1
    assert {t["dtype"] for t in info["tensors"]} >= {"F32", "BF16", "F16", "F64", "I64"}
    text = ckpt("info", packed).stdout
    assert "ratio" in text and "w.bf16" in text
    original = second.read_bytes()
    first.unlink()  # the base is found in either form: only the .tzst is left
    out = tmp_path / "restored.safetensors"
    r = ckpt("decompress", packed, "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == original
    r = ckpt("decompress", packed, "-o", out)
    assert r.returncode == 2 and "exists" in r.stderr  # EXIT_ERROR, like every error
    second.unlink()
    assert ckpt("decompress", packed).returncode == 0
    assert second.read_bytes() == original


@pytest.mark.parametrize("damage", ["truncate", "flip-payload", "flip-header", "garbage"])
def test_bad_input_one_line_exit_2_no_output(files: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    first, _ = files
    assert ckpt("compress", first).returncode == 0
    packed = first.with_name(first.name + ".tzst")
    if damage == "truncate":
        packed.write_bytes(packed.read_bytes()[:-100])
    elif damage == "flip-payload":
        flip_byte(packed, 500)
    elif damage == "flip-header":
        data = bytearray(packed.read_bytes())
        data[40] ^= 0x20
        packed.write_bytes(bytes(data))
    else:
        packed.write_bytes(b"not a checkpoint at all")
    first.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in ("decompress", "verify"):
        r = ckpt(command, packed)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("tritter-ckpt: error:"), r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp file


def test_wrong_delta_base_is_refused(files: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = files
    assert ckpt("compress", second, "--delta-from", first).returncode == 0
    packed = second.with_name(second.name + ".tzst")
    second.unlink()
    first.write_bytes(synthetic(99))  # a different file under the base's name
    r = ckpt("decompress", packed)
    assert r.returncode == 2 and "different file" in r.stderr, r.stderr
    assert not second.exists()
    first.unlink()
    r = ckpt("verify", packed)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr


def test_compress_bad_raw_input(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\xff" * 64)
    r = ckpt("compress", bad)
    assert r.returncode == 2 and "not a checkpoint" in r.stderr  # decided by content (formats/sniff.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert ckpt("verify", tmp_path / "missing.safetensors").returncode == 2
