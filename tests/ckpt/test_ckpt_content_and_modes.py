"""tritter-ckpt decides what a file is by its content, not its name, and says what a wrong
file is; files it writes keep the permissions of the file they came from."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from ckpt_helpers import synthetic
from conftest import tool


def ckpt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("tritter-ckpt"), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint (mode 0600, as tritterd writes them) and its compressed form."""
    raw = tmp_path / "step-00000002.safetensors"
    raw.write_bytes(synthetic(seed=3))
    os.chmod(raw, 0o600)
    assert ckpt("compress", raw).returncode == 0
    return raw, tmp_path / "step-00000002.safetensors.tzst"


def test_a_renamed_compressed_checkpoint_is_recognised_by_its_magic(pair: tuple[Path, Path], tmp_path: Path) -> None:
    raw, packed = pair
    renamed = tmp_path / "x.bin"
    shutil.copy(packed, renamed)
    info = ckpt("info", renamed)
    assert info.returncode == 0 and "tritter-ckpt-zst" in info.stdout, info.stderr
    verify = ckpt("verify", renamed)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr
    out = tmp_path / "restored"
    assert ckpt("decompress", renamed, "-o", out).returncode == 0
    assert out.read_bytes() == raw.read_bytes()
    again = ckpt("compress", renamed)  # already compressed, whatever the name says
    assert again.returncode == 2 and "already compressed" in again.stderr


def test_a_renamed_plain_checkpoint_is_recognised_too(pair: tuple[Path, Path], tmp_path: Path) -> None:
    raw, _ = pair
    renamed = tmp_path / "weights.tzst"  # a plain safetensors with a compressed-looking name
    shutil.copy(raw, renamed)
    info = ckpt("info", renamed)
    assert info.returncode == 0 and "safetensors" in info.stdout, info.stderr
    no = ckpt("decompress", renamed, "-o", tmp_path / "y")
    assert no.returncode == 2 and "not compressed" in no.stderr


@pytest.mark.parametrize(("content", "says"), [
    (b"", "an empty file"),
    (b"hello, this is text\n" * 10, "a text file"),
    (b'{"a": 1}', "a JSON file"),
    (b"\x7fELF" + bytes(100), "an executable"),
    (b"\x28\xb5\x2f\xfd" + bytes(20), "zstd"),
    (b"\x80\x04\x95" + bytes(30), "pickle"),
])
def test_a_wrong_file_gets_a_message_that_says_what_it_is(tmp_path: Path, content: bytes, says: str) -> None:
    wrong = tmp_path / "model.safetensors"
    wrong.write_bytes(content)
    for command in ("info", "verify", "compress", "decompress"):
        r = ckpt(command, wrong)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (command, r.stderr)
        assert says in r.stderr and "not a checkpoint" in r.stderr, (command, r.stderr)
        assert "header length" not in r.stderr


def test_a_torch_zip_file_is_named(tmp_path: Path) -> None:
    pt = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02")
    r = ckpt("info", pt)
    assert r.returncode == 2 and "zip archive" in r.stderr and "torch.save" in r.stderr


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_written_files_keep_the_source_permissions(tmp_path: Path, mode: int) -> None:
    raw = tmp_path / "step-00000004.safetensors"
    raw.write_bytes(synthetic(seed=1))
    os.chmod(raw, mode)
    old_umask = os.umask(0o022)  # the usual umask would give 0644
    try:
        assert ckpt("compress", raw).returncode == 0
        packed = tmp_path / "step-00000004.safetensors.tzst"
        assert packed.stat().st_mode & 0o777 == mode
        restored = tmp_path / "restored.safetensors"
        assert ckpt("decompress", packed, "-o", restored).returncode == 0
        assert restored.stat().st_mode & 0o777 == mode
        delta_src = tmp_path / "step-00000006.safetensors"
        delta_src.write_bytes(synthetic(seed=1, scale=1.01))
        os.chmod(delta_src, mode)
        assert ckpt("compress", delta_src, "--delta-from", packed).returncode == 0
        assert (tmp_path / "step-00000006.safetensors.tzst").stat().st_mode & 0o777 == mode
    finally:
        os.umask(old_umask)


def test_a_rewritten_file_keeps_its_permissions(tmp_path: Path) -> None:
    """atomic_write (run.json, cursors, exports) replaces a file with one of the same mode."""
    from tritter.formats.files import atomic_write

    path = tmp_path / "run.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    old_umask = os.umask(0o022)
    try:
        atomic_write(path, b'{"status": "running"}\n', durable=False)
        assert path.stat().st_mode & 0o777 == 0o600
        fresh = tmp_path / "new.json"
        atomic_write(fresh, b"{}\n", durable=False)
        assert fresh.stat().st_mode & 0o777 == 0o644  # a new file: the umask's default
    finally:
        os.umask(old_umask)
