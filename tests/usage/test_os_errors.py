"""Bad paths and bad bytes get ONE plain line (protocol/oserrors.py): exit 2, no ``[Errno N]``, no
exception class names, no codec internals, never an empty path.

Every situation here fails for root too (a file where a folder must be, a folder where a file must
be, non-UTF-8 bytes, RLIMIT_FSIZE for a full disk); chmod-based ones would not.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon, ctl, tool
from tritter.protocol.oserrors import decode_error_reason, error_line, home_error_line, os_error_line, os_error_reason

SINKS = ("tritter-record", "tritter-compress", "tritter-upload", "tritter-tensorboard")
NOT_UTF8 = b"hello\n\xba\xba world\n"  # byte 0xba at offset 6


def run_tool(name: str, *args: str, cwd: Path | None = None, fsize: int | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a console script; ``fsize``: RLIMIT_FSIZE in bytes (a write past it fails with EFBIG, like a full disk)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([tool(name), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd,
                          timeout=timeout, preexec_fn=limit if fsize is not None else None)


def plain_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a failed command, after checking it is plain (exit 2, no internals)."""
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert len(err.splitlines()) == 1, err
    assert "Errno" not in err and "Traceback" not in err, err
    assert "Error:" not in err.replace("error:", ""), err  # no FileExistsError: / UnicodeDecodeError:
    assert "codec" not in err and "position" not in err, err
    assert ": :" not in err and not err.endswith(":"), err  # never an empty path
    return err


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


# -- a home that is a file, or under one -----------------------------------------------------------
@pytest.mark.parametrize("name", ["tritterd", *SINKS])
def test_home_that_is_a_file(name: str, afile: Path) -> None:
    err = plain_one_line(run_tool(name, "--home", str(afile)))
    assert err == f"{name}: error: cannot use home {afile}: it is a file, not a folder"
    assert afile.read_text() == "not a folder\n"  # untouched


@pytest.mark.parametrize("name", ["tritterd", "tritter-record"])
def test_home_under_a_file(name: str, afile: Path) -> None:
    err = plain_one_line(run_tool(name, "--home", str(afile / "sub")))
    assert err == f"{name}: error: cannot use home {afile / 'sub'}: {afile} is a file, not a folder"


def test_sink_runs_home_that_is_a_file(afile: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for who in ("srv", "cli"):
        assert run_tool("tritterctl", "keygen", str(keys), who).returncode == 0
    err = plain_one_line(run_tool("tritter-record", "--connect", "tcp://127.0.0.1:9", "--server-key", str(keys / "srv.key"),
                                  "--client-key", str(keys / "cli.key_secret"), "--runs-home", str(afile)))
    assert err == f"tritter-record: error: cannot use home {afile}: it is a file, not a folder"


def test_keygen_into_a_file(afile: Path) -> None:
    err = plain_one_line(run_tool("tritterctl", "keygen", str(afile), "bob"))
    assert err == f"tritterctl: error: {afile}: it is a file, not a folder"


@pytest.mark.parametrize(("inside", "make", "words"), [
    ("events.log", "folder", "events.log: it is a folder, not a file"),
    ("runs", "file", "runs: it is a file, not a folder"),
    ("sock", "file", "sock: it is a file, not a folder"),
])
def test_daemon_home_with_a_wrong_kind_inside(tmp_path: Path, inside: str, make: str, words: str) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / inside).mkdir() if make == "folder" else (home / inside).write_text("x")
    err = plain_one_line(run_tool("tritterd", "--home", str(home), "--no-recorder"))
    assert err == f"tritterd: error: cannot use home {home}: {words}"
    assert (home / inside).is_dir() == (make == "folder")  # left as it was


# -- bytes that are not UTF-8 ------------------------------------------------------------------------
def test_sample_prompts_not_utf8(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(NOT_UTF8)
    err = plain_one_line(ctl(tmp_path / "home", "start", "--corpus", str(tmp_path), "--sample-prompts", str(prompts),
                             check=False))
    assert err.endswith(f"--sample-prompts {prompts}: cannot read it: not UTF-8 text (byte 0xba at offset 6)"), err


def test_tokenizer_not_utf8_is_refused_by_the_daemon(daemon: Daemon, home: Path, tmp_path: Path) -> None:
    daemon.start()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to train on\n" * 50)
    tok = tmp_path / "good.safetensors"
    tok.write_bytes(struct.pack("<Q", 2) + b"{}" + NOT_UTF8)  # 0xba at offset 16
    err = plain_one_line(ctl(home, "start", "--corpus", str(corpus), "--tokenizer", str(tok), check=False))
    assert f"{tok}: cannot read: not UTF-8 text (byte 0xba at offset 16)" in err, err
    assert ctl(home, "runs", "--json").stdout.strip() == "[]"  # nothing was started


# -- tokenizer train output ---------------------------------------------------------------------------
def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(["alpha beta gamma delta epsilon"] * 400))
    return corpus


def test_tokenizer_train_into_a_file(afile: Path, tmp_path: Path) -> None:
    err = plain_one_line(run_tool("tritterctl", "tokenizer", "train", "--corpus", str(_corpus(tmp_path)),
                                  "--vocab-size", "300", "-o", str(afile)))
    assert err.startswith(f"tritterctl: error: {afile}") and "not a folder" in err, err
    assert afile.read_text() == "not a folder\n"


def test_tokenizer_train_on_a_full_disk_names_the_output(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    err = plain_one_line(run_tool("tritterctl", "tokenizer", "train", "--corpus", str(_corpus(tmp_path)),
                                  "--vocab-size", "300", "-o", str(out), fsize=2000))
    assert err == f"tritterctl: error: {out}: file too large", err  # EFBIG: the write had no file name
    assert not (out / "tokenizer.json").exists()


# -- tritter-ckpt ---------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    return path


def test_ckpt_output_is_a_folder_even_with_force(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "dd"
    out.mkdir()
    err = plain_one_line(run_tool("tritter-ckpt", "compress", str(checkpoint), "-o", str(out), "-f"))
    assert err == f"tritter-ckpt: error: -o {out} is a folder, not a file"
    assert out.is_dir() and list(out.iterdir()) == []
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_ckpt_on_a_full_disk_names_the_output(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tzst"
    err = plain_one_line(run_tool("tritter-ckpt", "compress", str(checkpoint), "-o", str(out), fsize=4096))
    assert err == f"tritter-ckpt: error: {out}: file too large", err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(("content", "words"), [
    (b"abcd", "too short to be a checkpoint (4 bytes)"),
    (b"\x01\x00\x00\x00", "too short to be a checkpoint (4 bytes)"),
    (struct.pack("<Q", 2**40) + b'{"a": 1}' + b" " * 99,
     "a safetensors header length past the end of the file (1,099,511,627,776 bytes said, 107 there)"),
    (struct.pack("<Q", 10**15) + b"\x00" * 200, "a file of 208 bytes in no format tritter knows"),
])
def test_ckpt_says_what_a_non_checkpoint_is(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    for command in ("info", "compress", "verify"):
        err = plain_one_line(run_tool("tritter-ckpt", command, str(path)))
        assert err == f"tritter-ckpt: error: {path}: not a checkpoint: {words}", err


# -- the formatter itself, on real errors ------------------------------------------------------------
def test_formatter_on_real_errors(afile: Path, tmp_path: Path) -> None:
    with pytest.raises(OSError) as full:
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    assert full.value.errno == errno.ENOSPC and not full.value.filename
    assert os_error_line(full.value) == "no space left on the device"
    assert os_error_line(full.value, tmp_path / "out") == f"{tmp_path / 'out'}: no space left on the device"
    with pytest.raises(OSError) as is_dir:
        open(tmp_path, "rb")
    assert os_error_line(is_dir.value) == f"{tmp_path}: it is a folder, not a file"
    with pytest.raises(OSError) as exists:
        afile.mkdir(exist_ok=True)
    assert home_error_line(exists.value, afile) == f"cannot use home {afile}: it is a file, not a folder"
    folder = tmp_path / "dd"
    folder.mkdir()
    with pytest.raises(OSError) as renamed:
        os.replace(afile, folder)
    assert os_error_line(renamed.value) == f"{folder}: it is a folder, not a file"  # the destination, not the temp
    with pytest.raises(UnicodeDecodeError) as bad:
        NOT_UTF8.decode("utf-8")
    assert decode_error_reason(bad.value) == "not UTF-8 text (byte 0xba at offset 6)"
    assert error_line(bad.value, "out") == "not UTF-8 text (byte 0xba at offset 6)"  # the path is for OSErrors only


@pytest.mark.parametrize(("code", "words"), [
    (errno.EACCES, "permission denied"),
    (errno.EPERM, "not permitted (read-only or immutable?)"),
    (errno.EROFS, "read-only file system"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.ENOENT, "does not exist"),
    (errno.ECONNRESET, "connection reset by peer"),  # unlisted: strerror, lower-cased, no number
])
def test_formatter_words_for_errnos_root_cannot_provoke(code: int, words: str) -> None:
    error = OSError(code, os.strerror(code), "/x/tritterd.lock")
    assert os_error_reason(error) == words
    assert home_error_line(error, "/x") == f"cannot use home /x: tritterd.lock: {words}"
