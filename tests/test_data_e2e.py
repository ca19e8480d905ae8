"""Issue 13 end to end, through the real daemon and CLIs: bad data is one line at ``start``; a run
on its own corpus and tokenizer trains, reports ``prepare``, exports a tokenizer that
transformers loads with the same ids; a corpus swapped between stop and resume is refused
until it is put back."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import Daemon, children_of, cmdline, ctl, events, follow_until

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune, must be in want of a wife.\n\n"
    "However little known the feelings or views of such a man may be.\n"
)


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritterctl: error: "), result.stderr
    return lines[0]


def corpus_jsonl(path: Path, n: int = 200, variant: str = "") -> Path:
    path.write_text("".join(json.dumps({"text": f"{variant}Document {i}. " + PROSE * (1 + i % 3)}) + "\n" for i in range(n)))
    return path


def test_bad_data_is_refused_at_start(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    (tmp_path / "empty").mkdir()
    (tmp_path / "wrong.jsonl").write_text('{"body": "text here"}\n')
    (tmp_path / "tok.json").write_text("{}")
    cases = [
        (["--corpus", "/bin/ls"], "/bin/ls: looks binary"),
        (["--corpus", str(tmp_path / "empty")], "corpus folder has no usable files"),
        (["--corpus", str(tmp_path / "wrong.jsonl")], 'wrong.jsonl: line 1: no "text" field (fields: body)'),
        (["--corpus", str(tmp_path / "wrong.jsonl"), "--text-field", "body", "--tokenizer", str(tmp_path / "tok.json")],
         "tok.json: not a tokenizer.json"),
    ]
    for args, message in cases:
        assert message in one_line_error(ctl(home, "start", "--end", "tiny", *args, check=False))
    assert "no runs yet" in ctl(home, "runs").stdout  # nothing was started


def test_own_tokenizer_run_exports_it_and_swapped_corpus_is_refused(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tritter.formats.tokenizer import load_tokenizer_spec

    corpus = corpus_jsonl(tmp_path / "docs.jsonl")
    original = corpus.read_bytes()
    tok_dir = tmp_path / "tok"
    train = ctl(home, "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "-o", str(tok_dir))
    assert "300 ids (model vocabulary 320)" in train.stdout
    daemon.start()
    # Long enough that the stop below always comes before the end (a 6-step run could finish first).
    run = ctl(home, "start", "--end", "tiny", "--steps", "300", "--checkpoint-every", "25", "--no-hybrid",
              "--corpus", str(corpus), "--tokenizer", str(tok_dir)).stdout.strip()
    follow_until(home, lambda e: e["kind"] == "checkpoint" and e["run_id"] == run and e["step"] >= 25)
    ctl(home, "stop", run)
    follow_until(home, lambda e: e["kind"] == "run" and e["run_id"] == run and e["status"] == "stopped")
    ready = [e for e in events(home) if e["kind"] == "prepare" and e["stage"] == "ready"]
    assert ready and ready[0]["vocab_size"] == 320 and ready[0]["tokens"] > 1000
    assert "data       ready · " in ctl(home, "status", run).stdout

    corpus.write_bytes(corpus_jsonl(tmp_path / "other.jsonl", variant="Other ").read_bytes())  # swapped
    ctl(home, "resume", run)
    failed = follow_until(home, lambda e: e["kind"] == "run" and e["run_id"] == run and e["status"] == "failed")
    assert failed["reason"].startswith(f"refusing to resume: the corpus {corpus} changed (content digest ")
    assert "Error" not in failed["reason"]

    deadline = time.monotonic() + 60  # the failed worker exits before the run can resume
    while any("worker_main" in cmdline(pid) for pid in children_of(daemon.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The daemon's own log says it in one line too: bad data is not a bug, so no traceback.
    exited = f"worker exited with code 1: refusing to resume: the corpus {corpus} changed"
    while exited not in daemon.stderr() and time.monotonic() < deadline:  # logged once the daemon reaps it
        time.sleep(0.1)
    log = daemon.stderr()
    assert f"training failed: refusing to resume: the corpus {corpus} changed" in log
    assert exited in log
    assert "Traceback" not in log and "DataError" not in log
    corpus.write_bytes(original)  # put back: resumable again, and it completes
    ctl(home, "resume", run)
    assert ctl(home, "wait", run, "--timeout", "240").returncode == 0
    export = home / "runs" / run / "export" / "tiny"
    assert json.loads((export / "config.json").read_text())["vocab_size"] == 320
    text = "A truth <|endoftext|> universally acknowledged."
    hf = AutoTokenizer.from_pretrained(export)
    assert hf(text).input_ids == load_tokenizer_spec(tok_dir).build().encode(text, add_special_tokens=False).ids
