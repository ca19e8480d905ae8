"""What ``tritterctl start`` (tritterd's start-time check) and ``tritterctl tokenizer train`` can
tell from a bounded read: an empty corpus in every form (blank files, a folder without usable
files, JSONL whose texts are all empty, Parquet without rows, empty token files) and one too
small to train are refused in one line, exit 2, with no run created and nothing written; and
gzip/zstd-compressed text is read like its uncompressed form (docs/data.md).

Real files, the real daemon and CLIs; the engine's own reader (``load_token_data``) is the
reference the start-time verdicts are compared with.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import Daemon, ctl, events
from tritter.formats.corpus import PROBE_BYTES, PROBE_FILES, list_corpus
from tritter.formats.datacheck import check_data

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune, must be in want of a wife.\n\n"
    "However little known the feelings or views of such a man may be on his first entering a neighbourhood.\n"
)
EMBEDDED = Path(__file__).resolve().parents[1] / "daemon" / "assets" / "tokenizer.json"


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritterctl: error: "), result.stderr
    assert "Traceback" not in result.stderr and "DataError" not in result.stderr
    return lines[0]


def empty_corpora(root: Path) -> dict[str, tuple[Path, str]]:
    """Corpora with no text, each with the line start must print: name -> (path, message part)."""
    root.mkdir()
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, path: Path, message: str = "corpus is empty (no text): ") -> None:
        cases[name] = (path, message + str(path))

    (d := root / "emptyfile").mkdir()
    (d / "empty.txt").write_bytes(b"")  # the user trial's `mkdir bad2; : > bad2/empty.txt`
    case("folder with an empty file", d)
    (d := root / "blank").mkdir()
    (d / "a.txt").write_text("   \n\t\n")
    (d / "b.md").write_text("\n\n\r\n")
    (d / "sub").mkdir()
    (d / "sub" / "c").write_text(" ")  # extensionless, sniffs as text, blank
    (d / "d.txt.gz").write_bytes(gzip.compress(b" \n \n"))
    case("folder of whitespace-only files, one compressed", d)
    (d := root / "skipped").mkdir()
    (d / "notes.csv").write_text("a,b\n1,2\n")
    (d / "code.py").write_text("print('hi')\n")
    (d / ".hidden.txt").write_text(PROSE)
    cases["folder whose files are all skipped"] = (d, "corpus folder has no usable files (")
    (p := root / "blank.txt").write_text(" \n \n")
    case("whitespace-only text file", p)
    (p := root / "empty.txt.gz").write_bytes(gzip.compress(b""))
    case("empty gzip-compressed text", p)
    (p := root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", None, "  \n ", ""]))
    case("JSONL whose texts are all empty or null", p)
    (p := root / "texts.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(p.with_suffix("").read_bytes()))
    case("compressed JSONL whose texts are all empty", p)
    (p := root / "empty.jsonl").write_bytes(b"")
    case("empty JSONL", p)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), p := root / "rows0.parquet")
    case("Parquet with zero rows", p)
    pq.write_table(pa.table({"text": pa.array([None, "", " "], pa.string())}), p := root / "nulls.parquet")
    case("Parquet whose texts are all null or blank", p)
    (p := root / "empty.bin").write_bytes(b"")
    case("empty .bin", p)
    np.save(p := root / "empty.npy", np.zeros(0, dtype=np.uint16))
    case("empty .npy", p)
    (p := root / "hi.txt").write_text("hi")
    cases["text too small to train"] = (p, "corpus too small: ")
    np.save(p := root / "five.npy", np.arange(5, dtype=np.uint16))
    cases["token file too small to train"] = (p, f"corpus too small: 5 tokens (need at least 20): {p}")
    return cases


def test_start_refuses_empty_and_too_small_corpora_and_creates_no_run(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    for name, (path, message) in empty_corpora(tmp_path / "c").items():
        line = one_line_error(ctl(home, "start", "--end", "tiny", "--steps", "2", "--corpus", str(path), check=False))
        assert message in line, (name, line)
    assert "no runs yet" in ctl(home, "runs").stdout
    assert not [e for e in events(home) if e.get("kind") == "run"]  # nothing in the event log either


def test_tokenizer_train_refuses_empty_corpora_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    for name, (path, message) in empty_corpora(tmp_path / "c").items():
        if path.suffix in (".bin", ".npy") or "too small" in message:
            continue  # pre-tokenized: refused for being tokens (below); a tokenizer can train on "hi"
        out = tmp_path / "tok"
        line = one_line_error(ctl(home, "tokenizer", "train", "--corpus", str(path), "--vocab-size", "300",
                                  "-o", str(out), check=False))
        assert message in line, (name, line)
        assert not out.exists(), name
    assert "pre-tokenized" in one_line_error(ctl(home, "tokenizer", "train", "--corpus", str(tmp_path / "c" / "empty.bin"),
                                                 "--vocab-size", "300", "-o", str(tmp_path / "tok"), check=False))


def test_start_check_agrees_with_the_engine_on_too_small(tmp_path: Path) -> None:
    """At the boundary (about 20 tokens) the start-time count is the engine's: each corpus is
    refused at start exactly when the engine's own tokenization refuses it, with the same line."""
    from tritter.daemon.engine.data import load_token_data

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    verdicts = set()
    for n in range(1, 16):
        for docs in (1, 3):
            folder = tmp_path / f"c{n}-{docs}"
            folder.mkdir()
            for d in range(docs):
                (folder / f"{d}.txt").write_text(" ".join(words[:n]) + "\n")
            start = check_data(str(folder), None, default_tokenizer=EMBEDDED)
            try:
                load_token_data(corpus=folder)
                engine = None
            except ValueError as error:
                engine = str(error)
            assert start == engine, (n, docs, start, engine)
            verdicts.add(start is None)
    assert verdicts == {True, False}  # both sides of the boundary were seen


def test_the_start_check_stays_bounded_and_never_refuses_what_it_did_not_read(tmp_path: Path) -> None:
    """Text past the probe's bounds (256 KB of blank first, or past 256 blank files) is not read at
    start, so such a corpus is accepted there; the engine reads it whole."""
    big = tmp_path / "big.txt"
    big.write_text(" " * (PROBE_BYTES + 10) + PROSE)
    assert check_data(str(big), None, default_tokenizer=EMBEDDED) is None
    many = tmp_path / "many"
    many.mkdir()
    for i in range(PROBE_FILES + 1):
        (many / f"{i:04d}.txt").write_text("\n")
    (many / "zzzz.txt").write_text(PROSE * 3)
    assert check_data(str(many), None, default_tokenizer=EMBEDDED) is None
    (many / "zzzz.txt").write_text("")  # within the bounds it would be refused; past them, not judged
    assert check_data(str(many), None, default_tokenizer=EMBEDDED) is None
    small = tmp_path / "small"
    small.mkdir()
    for i in range(10):
        (small / f"{i}.txt").write_text("\n")
    assert check_data(str(small), None, default_tokenizer=EMBEDDED) == f"corpus is empty (no text): {small}"


# --------------------------------------------------------------------------- compressed text


def test_compressed_text_is_read_like_its_uncompressed_form(tmp_path: Path) -> None:
    from tritter.daemon.engine.data import load_token_data

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    texts = {"a": PROSE * 40, "b": "Chapter 2\r\n" + PROSE * 30, "c": "\ufeffBOM text. " + PROSE * 20}
    (plain / "a.txt").write_text(texts["a"])
    (plain / "b.md").write_text(texts["b"])
    (plain / "c").write_text(texts["c"])
    (packed / "a.txt.gz").write_bytes(gzip.compress(texts["a"].encode()))
    (packed / "b.md.zst").write_bytes(zstandard.ZstdCompressor().compress(texts["b"].encode()))
    (packed / "c.gz").write_bytes(gzip.compress(texts["c"].encode()))  # extensionless under .gz
    assert [f.compression for f in list_corpus(packed)] == ["gz", "zst", "gz"]
    want = np.asarray(load_token_data(corpus=plain).train)
    assert want.size > 100
    assert np.array_equal(np.asarray(load_token_data(corpus=packed).train), want)
    single = tmp_path / "one.txt.gz"
    single.write_bytes(gzip.compress(texts["a"].encode()))
    (tmp_path / "one.txt").write_text(texts["a"])
    assert np.array_equal(np.asarray(load_token_data(corpus=single).train), np.asarray(load_token_data(corpus=tmp_path / "one.txt").train))


def test_tokenizer_train_reads_compressed_text_as_start_does(home: Path, tmp_path: Path) -> None:
    """The same tokenizer from a folder of .txt.gz/.md.zst as from the uncompressed folder:
    train reads the files start reads, decompressed."""
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    for i in range(6):
        text = f"Document {i}. " + PROSE * (3 + i)
        (plain / f"d{i}.txt").write_text(text)
        data = text.encode()
        (packed / f"d{i}.txt.gz" if i % 2 else packed / f"d{i}.txt.zst").write_bytes(
            gzip.compress(data) if i % 2 else zstandard.ZstdCompressor().compress(data))
    for corpus, out in ((plain, tmp_path / "tok-plain"), (packed, tmp_path / "tok-packed")):
        result = ctl(home, "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "-o", str(out))
        assert "300 ids" in result.stdout
    assert (tmp_path / "tok-packed" / "tokenizer.json").read_bytes() == (tmp_path / "tok-plain" / "tokenizer.json").read_bytes()


def test_start_accepts_compressed_text_and_names_what_it_cannot_read(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "x.txt.xz").write_bytes(lzma.compress(PROSE.encode() * 10))
    (tmp_path / "x.txt.bz2").write_bytes(bz2.compress(PROSE.encode() * 10))
    (tmp_path / "t.bin.gz").write_bytes(gzip.compress(np.arange(100, dtype="<u2").tobytes()))
    (tmp_path / "archive.gz").write_bytes(gzip.compress(b"\x00\x01binary" * 100))
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(PROSE.encode() * 50)[:40])
    cases = [
        ("x.txt.xz", "x.txt.xz: an xz-compressed file, which tritter does not read; decompress it"),
        ("x.txt.bz2", "x.txt.bz2: a bzip2-compressed file, which tritter does not read"),
        ("t.bin.gz", "t.bin.gz: a gzip-compressed .bin file; decompress it first"),
        ("archive.gz", "archive.gz: a gzip-compressed file whose content looks binary (contains NUL bytes), not text"),
        ("cut.txt.gz", "cut.txt.gz: cannot read the gzip stream: "),
    ]
    daemon.start()
    for name, message in cases:
        line = one_line_error(ctl(home, "start", "--end", "tiny", "--corpus", str(tmp_path / name), check=False))
        assert message in line and "looks binary (contains NUL bytes), not text" not in line.replace("whose content looks", ""), line
    assert "no runs yet" in ctl(home, "runs").stdout
    corpus = tmp_path / "book.txt.gz"
    corpus.write_bytes(gzip.compress((PROSE * 400).encode()))
    run = ctl(home, "start", "--end", "tiny", "--steps", "2", "--corpus", str(corpus)).stdout.strip()
    assert ctl(home, "wait", run, "--timeout", "240").returncode == 0
    ready = [e for e in events(home) if e.get("kind") == "prepare" and e.get("stage") == "ready"]
    assert ready and ready[-1]["tokens"] > 1000  # the decompressed text, tokenized


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_of_empty_texts_is_refused_by_check_data(tmp_path: Path, suffix: str) -> None:
    raw = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in ["", None, " "])
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(raw))
    assert check_data(str(path), None) == f"corpus is empty (no text): {path}"


@pytest.mark.parametrize("flag,value", [("--vocab-size", "100"), ("--vocab-size", "99999999999"), ("--min-frequency", "-1"),
                                        ("--max-chars", "-5")])
def test_tokenizer_train_numbers_are_checked_where_typed(home: Path, tmp_path: Path, flag: str, value: str) -> None:
    (tmp_path / "c.txt").write_text(PROSE * 5)
    args = {"--vocab-size": "300", flag: value}
    result = ctl(home, "tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "-o", str(tmp_path / "tok"),
                 *[x for kv in args.items() for x in kv], check=False)
    assert "out of range" in one_line_error(result) and not (tmp_path / "tok").exists()
