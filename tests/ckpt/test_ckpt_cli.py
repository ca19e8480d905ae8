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


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and "Error:" not in r.stderr, r.stderr
    return lines[0]


def test_info_marks_the_tensors_stored_as_deltas(files: tuple[Path, Path]) -> None:
    first, second = files
    assert ckpt("compress", second, "--delta-from", first).returncode == 0
    packed = second.with_name(second.name + ".tzst")
    from tritter.formats import codec  # noqa: PLC0415

    xor = {s["name"] for s in codec.read_header(packed)["segments"] if any(d.get("x") for d in s.get("streams", []))}
    assert xor  # synthetic "next step" tensors are XOR-coded against the base
    info = json.loads(ckpt("info", packed, "--json").stdout)
    assert {t["name"] for t in info["tensors"] if t["delta"]} == xor
    text = ckpt("info", packed).stdout
    assert sum(line.rstrip().endswith("delta") for line in text.splitlines()) == len(xor)


def test_an_output_naming_an_input_is_refused_even_with_force(files: tuple[Path, Path]) -> None:
    first, second = files
    original = first.read_bytes()
    assert "input" in _one_line(ckpt("compress", first, "-o", first, "-f"))
    assert "input" in _one_line(ckpt("compress", second, "--delta-from", first, "-o", first, "-f"))
    assert first.read_bytes() == original
    assert ckpt("compress", first).returncode == 0
    packed = first.with_name(first.name + ".tzst")
    before = packed.read_bytes()
    assert "input" in _one_line(ckpt("decompress", packed, "-o", packed, "-f"))
    assert packed.read_bytes() == before


def test_compress_refuses_a_raw_checkpoint_that_fails_its_content_digest(tmp_path: Path) -> None:
    import numpy as np  # noqa: PLC0415

    from tritter.formats.safetensors_stream import Blob, write_safetensors  # noqa: PLC0415

    path = tmp_path / "step-00000001.safetensors"
    write_safetensors(path, [Blob("w", "F32", (4096,), memoryview(np.arange(4096, dtype=np.float32)).cast("B"))], {})
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # a tensor byte: the file still parses, its content digest no longer matches
    path.write_bytes(bytes(data))
    assert "content checksum" in _one_line(ckpt("compress", path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and path.read_bytes() == bytes(data)


def test_truncated_or_foreign_inputs_are_named_in_one_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = files
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(first.read_bytes()[:-1000])
    line = _one_line(ckpt("compress", cut))
    assert str(cut) in line and "truncated" in line
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    line = _one_line(ckpt("compress", second, "--delta-from", text))
    assert str(text) in line and "not a checkpoint" in line
    assert "no such folder" in _one_line(ckpt("compress", first, "-o", tmp_path / "typo" / "x.tzst"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, cut.name, text.name])


def test_sigterm_during_decompress_leaves_no_temp_file(tmp_path: Path) -> None:
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    big = tmp_path / "big.safetensors"
    rng = np.random.default_rng(0)
    save_file({f"w{i}": torch.from_numpy(rng.standard_normal(4 << 20, dtype=np.float32)) for i in range(12)}, str(big))  # 200 MB
    assert ckpt("compress", big).returncode == 0
    big.unlink()
    p = subprocess.Popen([tool("tritter-ckpt"), "decompress", str(big) + ".tzst"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(q.name.endswith(".tmp") for q in tmp_path.iterdir()):
        assert p.poll() is None and time.monotonic() < deadline, "decompress ended before its temp file was seen"
        time.sleep(0.002)
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=60) == 130
    assert sorted(q.name for q in tmp_path.iterdir()) == ["big.safetensors.tzst"]  # no temp, no partial output
