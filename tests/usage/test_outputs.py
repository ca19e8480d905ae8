"""An existing output is never overwritten without ``--force`` (docs/operations.md, "Exit
status"): every command that writes a path the user named (``tritterctl tokenizer train -o``,
``tritterctl keygen``, ``tritter-ckpt compress/decompress -o``) refuses in one line with exit 2
and touches nothing; with ``--force``/``-f`` the replacement is atomic, so a failed or killed
command leaves the old output as it was.  Real subprocesses, real files, ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import zmq.auth

from conftest import ctl, tool, wait_until
from test_numbers_and_exit_codes import assert_one_line_error, run_tool
from tritter.formats.corpus import PROBE_BYTES
from tritter.formats.tokenizer import load_tokenizer_spec

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune, must be in want of a wife.\n\n"
    "However little known the feelings or views of such a man may be on his first entering a neighbourhood.\n"
)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (hidden ones too): name -> (content, mtime_ns)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(home: Path, corpus: Path, out: Path, *extra: str, vocab: int = 300) -> subprocess.CompletedProcess[str]:
    return ctl(home, "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", str(vocab), "-o", str(out), *extra,
               check=False, timeout=120)


def corpus_file(path: Path, copies: int = 20) -> Path:
    path.write_text("".join(f"Document {i}. {PROSE}" for i in range(copies)))
    return path


def trained_tokenizer(home: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[bytes, int]]]:
    """A corpus ``tmp_path/c.txt``, a tokenizer trained from it into ``tmp_path/tok``, and the
    tokenizer folder's snapshot: what the overwrite tests must find untouched."""
    corpus = corpus_file(tmp_path / "c.txt")
    tok = tmp_path / "tok"
    assert train(home, corpus, tok).returncode == 0
    return corpus, tok, snapshot(tok)


def test_tokenizer_train_onto_an_existing_tokenizer_needs_force(home: Path, tmp_path: Path) -> None:
    corpus, tok, before = trained_tokenizer(home, tmp_path)
    digest = load_tokenizer_spec(tok).digest  # what a run started with --tokenizer tok records
    parent_before = sorted(os.listdir(tmp_path))
    for flags in ((), ("--vocab-size", "320")):
        err = assert_one_line_error(train(home, corpus, tok, *flags, vocab=310))
        assert err == f"tritterctl: error: {tok} exists and is not empty (use --force to overwrite)", err
    assert snapshot(tok) == before and sorted(os.listdir(tmp_path)) == parent_before  # nothing touched
    assert load_tokenizer_spec(tok).digest == digest  # so that run still resumes
    done = train(home, corpus, tok, "--force", vocab=310)
    assert done.returncode == 0, done.stderr
    assert load_tokenizer_spec(tok).ids == 310 and load_tokenizer_spec(tok).digest != digest
    assert sorted(os.listdir(tmp_path)) == parent_before  # swapped in whole: no temp or old folder left
    assert train(home, corpus, tok, "-f", vocab=300).returncode == 0  # -f is --force
    assert load_tokenizer_spec(tok).digest == digest  # deterministic: the first tokenizer again


def test_tokenizer_train_into_an_empty_or_new_folder_needs_no_force(home: Path, tmp_path: Path) -> None:
    corpus = corpus_file(tmp_path / "c.txt")
    (tmp_path / "empty").mkdir()
    assert train(home, corpus, tmp_path / "empty").returncode == 0  # nothing there to lose
    assert train(home, corpus, tmp_path / "new" / "deeper").returncode == 0
    assert load_tokenizer_spec(tmp_path / "new" / "deeper").ids == 300


def test_tokenizer_force_keeps_other_files_and_refuses_files_and_inputs(home: Path, tmp_path: Path) -> None:
    corpus = corpus_file(tmp_path / "c.txt")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights" * 100)
    (model / "config.json").write_text(json.dumps({"vocab_size": 320}))
    err = assert_one_line_error(train(home, corpus, model))
    assert "exists and is not empty (use --force" in err
    assert sorted(os.listdir(model)) == ["config.json", "model.safetensors"]
    assert train(home, corpus, model, "--force").returncode == 0
    assert (model / "model.safetensors").read_bytes() == b"weights" * 100  # a model folder keeps its weights
    assert sorted(os.listdir(model)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                         "tokenizer.json", "tokenizer_config.json"]
    # a file where the folder should go, and the corpus itself: refused even with --force
    target = tmp_path / "afile"
    target.write_text("keep me")
    err = assert_one_line_error(train(home, corpus, target, "--force"))
    assert "exists and is not a folder" in err and target.read_text() == "keep me"
    folder = tmp_path / "docs"
    folder.mkdir()
    corpus_file(folder / "a.txt")
    err = assert_one_line_error(train(home, folder, folder, "--force"))
    assert "is an input of this command" in err and os.listdir(folder) == ["a.txt"]


def test_tokenizer_force_keeps_the_old_tokenizer_when_the_train_fails(home: Path, tmp_path: Path) -> None:
    """A JSONL whose bad line lies past what start-time checks read: training fails part-way."""
    _, tok, before = trained_tokenizer(home, tmp_path)
    bad = tmp_path / "late.jsonl"
    record = json.dumps({"text": PROSE}) + "\n"
    bad.write_text(record * (2 * PROBE_BYTES // len(record)) + "{not json\n")
    err = assert_one_line_error(train(home, bad, tok, "--force"))
    assert "late.jsonl: line" in err and "not valid JSON" in err, err
    assert snapshot(tok) == before
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "late.jsonl", "tok"]


def test_tokenizer_force_killed_mid_train_keeps_the_old_tokenizer(home: Path, tmp_path: Path) -> None:
    _, tok, before = trained_tokenizer(home, tmp_path)
    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        for i in range(60_000):
            f.write(f"Paragraph {i} of many. {PROSE}")
    proc = subprocess.Popen([tool("tritterctl"), "--home", str(home), "tokenizer", "train", "--corpus", str(big),
                             "--vocab-size", "2000", "-o", str(tok), "--force"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def training_reads_past_the_start_check() -> bool:  # the trainer's reader, not the bounded probe
            for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == str(big):
                        pos = int(Path(f"/proc/{proc.pid}/fdinfo/{fd.name}").read_text().split()[1])
                        return pos > 2 * (1 << 20)  # past the probe's read (a 1 MB raw buffer)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            return False

        wait_until(training_reads_past_the_start_check, 60, "the trainer reading the corpus", every=0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(tok) == before
    assert sorted(os.listdir(tmp_path)) == ["big.txt", "c.txt", "tok"]


def test_keygen_never_replaces_a_key_pair_without_force(home: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert ctl(home, "keygen", str(keys), "alice").returncode == 0
    before = snapshot(keys)
    err = assert_one_line_error(ctl(home, "keygen", str(keys), "alice", check=False))
    assert err == f"tritterctl: error: {keys}/alice.key exists (use --force to overwrite)", err
    (keys / "alice.key").unlink()  # half a pair is still a pair: its secret is not replaced either
    err = assert_one_line_error(ctl(home, "keygen", str(keys), "alice", check=False))
    assert "alice.key_secret exists (use --force" in err
    assert (keys / "alice.key_secret").read_bytes() == before["alice.key_secret"][0]
    assert ctl(home, "keygen", str(keys), "alice", "--force").returncode == 0
    after = snapshot(keys)
    assert sorted(after) == ["alice.key", "alice.key_secret"]  # no temp folder left
    assert after["alice.key_secret"][0] != before["alice.key_secret"][0]
    assert (keys / "alice.key_secret").stat().st_mode & 0o777 == 0o600
    public, _ = zmq.auth.load_certificate(keys / "alice.key")
    public_of_secret, secret = zmq.auth.load_certificate(keys / "alice.key_secret")
    assert public == public_of_secret and secret
    err = assert_one_line_error(ctl(home, "keygen", str(keys), "../evil", "--force", check=False))
    assert "may use letters" in err


def test_ckpt_outputs_follow_the_same_rule(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    raw = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(4, 4)}, str(raw))
    out = tmp_path / "out.tzst"
    out.write_bytes(b"precious")
    err = assert_one_line_error(run_tool("tritter-ckpt", "compress", str(raw), "-o", str(out)))
    assert err.endswith(f"{out} exists (use --force to overwrite)") and out.read_bytes() == b"precious"
    assert run_tool("tritter-ckpt", "compress", str(raw), "-o", str(out), "-f").returncode == 0
    assert out.read_bytes() != b"precious"
    err = assert_one_line_error(run_tool("tritter-ckpt", "compress", str(raw), "-o", str(raw), "--force"))
    assert "is an input of this command" in err
