"""``formats/files.py``: the one atomic writer (files and folders) the daemon and the clients share."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tritter.formats.files import atomic_dir, atomic_write, atomic_write_with, file_sha256


def test_atomic_write_takes_bytes_chunks_or_a_writer(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write(target, [b"tw", bytearray(b"o-"), memoryview(b"parts")])
    assert target.read_bytes() == b"two-parts"
    atomic_write(target, lambda f: f.write(b"three"))
    assert target.read_bytes() == b"three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temp file left


def test_a_failed_check_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.tzst"
    target.write_bytes(b"old")
    fixed_tmp = tmp_path / "out.tzst.tmp"
    seen: list[bytes] = []

    def check(tmp: Path) -> None:
        seen.append(tmp.read_bytes())  # the finished temp file, under the name asked for
        assert tmp == fixed_tmp
        raise ValueError("verification failed")

    with pytest.raises(ValueError, match="verification failed"):
        atomic_write(target, b"new", tmp=fixed_tmp, check=check)
    assert seen == [b"new"]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tzst"]


def test_atomic_write_with_hands_the_writer_a_path(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.safetensors"
    atomic_write_with(target, lambda tmp: Path(tmp).write_bytes(b"by name"))
    assert target.read_bytes() == b"by name"
    with pytest.raises(OSError):
        atomic_write_with(target, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert target.read_bytes() == b"by name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 65536 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_atomic_dir_swaps_a_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "export" / "tiny"
    with atomic_dir(target) as tmp:
        (tmp / "a.json").write_bytes(b"1")
        (tmp / "b.bin").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["a.json", "b.bin"]

    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.json").write_bytes(b"half")
            raise RuntimeError("killed mid-export")
    assert (target / "a.json").read_bytes() == b"1" and (target / "b.bin").exists()  # the old one, whole

    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_bytes(b"3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # replaced, not merged
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp") or ".old-" in p.name]
