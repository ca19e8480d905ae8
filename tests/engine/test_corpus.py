"""Corpus readers, token shards and the tokenizer options (issue 13): every input format gives
the ids of encoding its documents directly, shards resume after kill -9, bad input is one line."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritter.daemon.engine import data as D
from tritter.formats.corpus import PROBE_BYTES, CorpusReader, DataError, list_corpus
from tritter.formats.datacheck import check_data
from tritter.formats.shards import TokenStream, read_index
from tritter.formats.tokenizer import load_tokenizer_spec, model_vocab_size, train_bpe, write_tokenizer_folder

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune, must be in want of a wife.\n\n"
    "However little known the feelings or views of such a man may be.\n"
)
DOCS = [PROSE * 3, "Second document, café — naïve 日本語 🙂.\n" * 5, "third  one\twith\ttabs " * 20]


@pytest.fixture(scope="module")
def spec():
    return D.embedded_tokenizer_spec()


def direct(spec, docs: list[str]) -> np.ndarray:
    """The reference: each document encoded whole with the tokenizers library, EOT between."""
    tok = spec.build()
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(spec.eot_id)
        ids += tok.encode(doc, add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int64)


def stream(td: D.TokenData) -> np.ndarray:
    return np.concatenate([np.asarray(td.train), np.asarray(td.heldout)]).astype(np.int64)


def load(tmp_path: Path, corpus: Path, **kw) -> D.TokenData:
    kw.setdefault("shard_tokens", 997)  # several shards: documents and windows cross shard boundaries
    kw.setdefault("batch_chars", 2000)
    return D.load_token_data(tmp_path / "cache", corpus, **kw)


def jsonl(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


# --------------------------------------------------------------------------- formats


FORMATS = {
    "book.txt": lambda: DOCS[0].encode(),
    "notes.md": lambda: DOCS[0].encode(),
    "README": lambda: DOCS[0].encode(),
    "crlf.txt": lambda: DOCS[0].replace("\n", "\r\n").encode(),
    "bom8.txt": lambda: codecs.BOM_UTF8 + DOCS[1].encode(),
    "bom16le.txt": lambda: codecs.BOM_UTF16_LE + DOCS[1].encode("utf-16-le"),
    "bom16be.txt": lambda: codecs.BOM_UTF16_BE + DOCS[1].encode("utf-16-be"),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_text_file_formats_give_direct_ids(tmp_path, spec, name):
    path = tmp_path / name
    path.write_bytes(FORMATS[name]())
    expected_doc = DOCS[1] if "bom" in name else DOCS[0]
    np.testing.assert_array_equal(stream(load(tmp_path, path)), direct(spec, [expected_doc]))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats_give_direct_ids(tmp_path, spec, suffix):
    data = jsonl(DOCS, field="body")
    data = gzip.compress(data) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(data) if suffix.endswith("zst") else data
    path = tmp_path / f"docs{suffix}"
    path.write_bytes(data)
    np.testing.assert_array_equal(stream(load(tmp_path, path, text_field="body")), direct(spec, DOCS))


def test_parquet_by_row_group_gives_direct_ids(tmp_path, spec):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(6)), "content": DOCS * 2}), path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    np.testing.assert_array_equal(stream(load(tmp_path, path, text_field="content")), direct(spec, DOCS * 2))


def test_mixed_folder_reads_every_format_in_path_order(tmp_path, spec):
    root = tmp_path / "mixed"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("alpha " * 40)
    (root / "b" / "c.jsonl").write_bytes(jsonl(["gamma " * 30, "delta " * 30]))
    (root / "b" / "deep" / "e.jsonl.gz").write_bytes(gzip.compress(jsonl(["epsilon " * 30])))
    (root / "b" / "deep" / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(["zeta " * 30])))
    pq.write_table(pa.table({"text": ["eta " * 30, "theta " * 30]}), root / "b" / "g.parquet")
    (root / "b" / "README").write_text("beta " * 40)
    (root / "b" / "h.md").write_bytes(codecs.BOM_UTF16_LE + ("iota " * 30).encode("utf-16-le"))
    (root / "b" / "blob").write_bytes(b"\x7fELF\x00\x01\x02")  # extensionless binary: skipped
    (root / "b" / "skip.py").write_text("print('not a corpus file')")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    names = [f.name for f in list_corpus(root)]
    # sorted by path components (a folder's files where the folder name sorts), hidden/binary/other skipped
    assert names == ["a.txt", "b/README", "b/c.jsonl", "b/deep/e.jsonl.gz", "b/deep/f.jsonl.zst", "b/g.parquet", "b/h.md"]
    docs = ["alpha " * 40, "beta " * 40, "gamma " * 30, "delta " * 30, "epsilon " * 30, "zeta " * 30,
            "eta " * 30, "theta " * 30, "iota " * 30]
    np.testing.assert_array_equal(stream(load(tmp_path, root)), direct(spec, docs))


@pytest.mark.parametrize("kind", ["bin", "npy32", "npy64"])
def test_pretokenized_files_are_used_as_is(tmp_path, kind):
    ids = np.arange(5000) % 8192
    if kind == "bin":
        path = tmp_path / "train.bin"
        ids.astype("<u2").tofile(path)
    else:
        path = tmp_path / "train.npy"
        np.save(path, ids.astype(np.int32 if kind == "npy32" else np.int64))
    td = D.load_token_data(tmp_path / "cache", path)
    np.testing.assert_array_equal(stream(td), ids)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("tokens-*"))  # no copy made


def test_pretokenized_ids_must_fit_the_tokenizer(tmp_path):
    path = tmp_path / "gpt2.bin"
    ids = np.full(40000, 7, dtype="<u2")
    ids[35000] = 50256  # a GPT-2 id: past the embedded tokenizer's 8192, beyond the 64 KB sniff
    ids.tofile(path)
    assert check_data(str(path), None) is None  # the first 64 KB are fine
    with pytest.raises(DataError, match=r"gpt2.bin: token 35000: id 50256 does not fit the tokenizer \(ids 0..8191\)"):
        D.load_token_data(tmp_path / "cache", path)
    ids[3] = 9000
    ids.tofile(path)
    assert "token 3: id 9000 does not fit" in check_data(str(path), None)


# --------------------------------------------------------------------------- long lines


def test_huge_line_with_spaces_is_split_exactly(tmp_path, spec):
    text = " ".join(f"word{i % 97}" for i in range(30000))  # ~240k chars, one line
    path = tmp_path / "line.txt"
    path.write_text(text)
    pieces = [p for p, _ in CorpusReader(list_corpus(path), chunk_chars=4096)]
    assert len(pieces) > 20 and max(map(len, pieces)) <= 2 * 4096 and "".join(pieces) == text
    np.testing.assert_array_equal(stream(load(tmp_path, path, chunk_chars=4096)), direct(spec, [text]))


def test_line_without_whitespace_is_cut_at_the_chunk_size(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_text("x" * 100_000)
    pieces = [p for p, _ in CorpusReader(list_corpus(path), chunk_chars=4096)]
    assert max(map(len, pieces)) <= 2 * 4096 and "".join(pieces) == "x" * 100_000


# --------------------------------------------------------------------------- shards


def test_shard_stream_batches_equal_array_batches(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(PROSE * 300)
    td = load(tmp_path, path, shard_tokens=1000, batch_chars=4000)
    index = read_index(next((tmp_path / "cache").glob("tokens-*")))
    assert index["complete"] and len(index["shards"]) > 5
    assert all(s["tokens"] == 1000 for s in index["shards"][:-1])
    flat = np.asarray(td.train)
    assert isinstance(td.train, TokenStream)
    a, b = D.Batches(td.train, 8, 64, seed=3), D.Batches(flat, 8, 64, seed=3)
    for _ in range(30):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(D.heldout_batches(td, 4, 64, 3), D.heldout_batches(
            D.TokenData(train=flat, heldout=np.asarray(td.heldout), source="", digest=""), 4, 64, 3)):
        assert torch.equal(xa, xb)


def test_cache_hit_reuses_shards_and_changed_corpus_rebuilds(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text(PROSE * 50)
    first = load(tmp_path, path)
    from tritter.daemon.engine import prepare

    def boom(*a, **k):
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(prepare, "build_shards", boom)
    again = load(tmp_path, path)
    assert again.digest == first.digest and again.corpus_digest == first.corpus_digest
    monkeypatch.undo()
    path.write_text(PROSE * 51)
    changed = load(tmp_path, path)
    assert changed.corpus_digest != first.corpus_digest and len(stream(changed)) > len(stream(first))
    assert len(list((tmp_path / "cache").glob("tokens-*"))) == 2


def test_damaged_shard_is_rebuilt(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(PROSE * 60)
    good = stream(load(tmp_path, path, shard_tokens=200))
    shard = sorted(next((tmp_path / "cache").glob("tokens-*")).glob("shard-*.bin"))[3]
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 0xFF
    shard.write_bytes(bytes(raw))
    np.testing.assert_array_equal(stream(load(tmp_path, path, shard_tokens=200)), good)
    assert shard.read_bytes() != bytes(raw)


CHILD = """
import sys
from pathlib import Path
from tritter.daemon.engine import data as D
D.load_token_data(Path(sys.argv[1]), Path(sys.argv[2]), shard_tokens=8000, batch_chars=20000)
"""


def test_kill9_mid_tokenization_resumes_from_finished_shards(tmp_path):
    corpus = tmp_path / "big.jsonl"
    docs = [f"Document {i}. " + PROSE * (1 + i % 5) for i in range(1500)]  # ~1.4 MB, ~40 shards
    corpus.write_bytes(jsonl(docs))
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(corpus)], env={**os.environ, "RAYON_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        index = None
        while time.monotonic() < deadline:  # wait for some finished shards, not all
            folders = list(cache.glob("tokens-*"))
            index = read_index(folders[0]) if folders else None
            if index and len(index["shards"]) >= 3:
                break
            assert child.poll() is None, "the build ended before it could be killed"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=10)
    index = read_index(next(cache.glob("tokens-*")))
    assert index is not None and not index["complete"], "the build finished before the kill"
    kept = {s["file"]: (cache / next(cache.glob("tokens-*")).name / s["file"]).stat().st_ino for s in index["shards"]}
    resumed = D.load_token_data(cache, corpus, shard_tokens=8000, batch_chars=20000)
    folder = next(cache.glob("tokens-*"))
    for name, inode in kept.items():  # finished shards were kept, not rewritten
        assert (folder / name).stat().st_ino == inode
    fresh = D.load_token_data(tmp_path / "fresh", corpus, shard_tokens=8000, batch_chars=20000)
    assert resumed.digest == fresh.digest
    np.testing.assert_array_equal(stream(resumed), stream(fresh))
    for a, b in zip(sorted(folder.glob("shard-*.bin")), sorted(next((tmp_path / "fresh").glob("tokens-*")).glob("shard-*.bin"))):
        assert a.read_bytes() == b.read_bytes()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# No NUL (a file with one is binary by design: docs/data.md) and no \r (text files read with universal newlines).
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), min_size=1, max_size=400))
def test_any_text_roundtrips_through_shards(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("rt")
    path = tmp / "t.txt"
    path.write_text("x" * 30 + text, encoding="utf-8")  # the prefix keeps it above the 20-token minimum
    td = D.load_token_data(tmp / "cache", path, shard_tokens=41, chunk_chars=16, batch_chars=64)
    assert D.load_tokenizer().decode(stream(td).tolist(), skip_special_tokens=False) == "x" * 30 + text


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from("ab \n\t\u00e9\U0001f642"), max_size=300), chunk=st.integers(1, 40))
def test_split_text_pieces_are_bounded_and_rejoin(text, chunk):
    from tritter.formats.corpus import split_text

    pieces = list(split_text(text, chunk))
    assert "".join(pieces) == text and all(len(p) <= 2 * chunk for p in pieces)
    assert all(len(p) >= chunk for p in pieces[:-1])  # no tiny pieces: cuts are searched from chunk on


# --------------------------------------------------------------------------- special tokens, tokenizers


def test_text_that_looks_like_a_special_token_never_becomes_one(tmp_path, spec):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(jsonl(["Before <|endoftext|> after <|pad|> end. " * 5, "next document " * 10]))
    ids = stream(load(tmp_path, path))
    assert int((ids == spec.eot_id).sum()) == 1  # only the separator tritter inserted
    assert int((ids == spec.pad_id).sum()) == 0


def test_trained_tokenizer_loads_with_tritter_and_transformers(tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text(PROSE * 20)
    out = tmp_path / "tok"
    write_tokenizer_folder(train_bpe(iter([PROSE * 20]), vocab_size=300), out)
    spec = load_tokenizer_spec(out)
    assert (spec.eot, spec.pad, spec.eot_id, spec.ids) == ("<|endoftext|>", "<|pad|>", 0, 300)
    assert model_vocab_size(spec.ids) == 320
    td = load(tmp_path, corpus, tokenizer=out)
    assert td.vocab_size == 320 and td.tokenizer_digest == spec.digest != D.embedded_tokenizer_spec().digest
    hf = AutoTokenizer.from_pretrained(out)
    text = "A truth <|endoftext|> of a wife."
    assert hf(text).input_ids == spec.build().encode(text, add_special_tokens=False).ids
    assert 0 not in hf(text).input_ids


def test_vocab_rounds_up_to_a_multiple_of_64():
    assert [model_vocab_size(n) for n in (1, 64, 65, 8192, 50257)] == [64, 64, 128, 8192, 50304]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("ls", None, "looks binary"),
        ("latin1.txt", "café".encode("latin-1") * 10, "is not UTF-8 text"),
        ("nul.txt", b"abc\x00def", "looks binary"),
        ("nofield.jsonl", b'{"title": "x"}\n', 'line 1: no "text" field'),
        ("notjson.jsonl", b"{not json\n", "line 1: not valid JSON"),
        ("num.jsonl", b'{"text": 5}\n', 'line 1: "text" is int, not a string'),
        ("fake.parquet", b"not parquet at all", "not a Parquet file"),
        ("odd.bin", b"\x01\x02\x03", "not a whole number of uint16 tokens"),
        ("matrix.npy", None, "must be a 1-D integer array"),
        ("cut.jsonl.gz", gzip.compress(b'{"text": "a whole line"}\n' * 50)[:30], "cannot read: Compressed file ended"),
        ("bad.jsonl.zst", b"not zstd data", "cannot read: zstd decompress error"),
    ],
)
def test_bad_input_is_one_line_at_start(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "ls":
        path = Path("/bin/ls")
    elif name == "matrix.npy":
        np.save(path, np.zeros((3, 3), dtype=np.int32))
    else:
        path.write_bytes(content)
    problem = check_data(str(path), None)
    assert problem is not None and message in problem and "\n" not in problem and "Error" not in problem


def test_bad_folders_and_tokenizers_at_start(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "has no usable files" in check_data(str(tmp_path / "empty"), None)
    assert "corpus not found" in check_data(str(tmp_path / "nope"), None)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("text " * 20)
    np.zeros(10, dtype="<u2").tofile(mixed / "b.bin")
    assert "mixes pre-tokenized" in check_data(str(mixed), None)
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    assert 'no column "text" (columns: body)' in check_data(str(tmp_path / "p.parquet"), None)
    (tmp_path / "bad.json").write_text("{}")
    assert "not a tokenizer.json" in check_data(None, str(tmp_path / "bad.json"))
    assert "tokenizer not found" in check_data(None, str(tmp_path / "none.json"))
    (tmp_path / "hf").mkdir()
    assert "no tokenizer.json" in check_data(None, str(tmp_path / "hf"))


def test_errors_found_while_tokenizing_name_file_and_line(tmp_path):
    path = tmp_path / "late.jsonl"
    bad = b'{"text": ["a", "list"]}\n'
    path.write_bytes(jsonl(["fine " * 10] * 3) + bad)
    # within the start-time probe's first MB it is found at start already
    assert check_data(str(path), None) == f'{path}: line 4: "text" is an array, not a string'
    lines = PROBE_BYTES // len(jsonl(["fine " * 10])) + 1
    path.write_bytes(jsonl(["fine " * 10] * lines) + bad)
    assert check_data(str(path), None) is None  # past it, only a full read finds it
    with pytest.raises(DataError) as error:
        load(tmp_path, path)
    assert str(error.value) == f'{path}: line {lines + 1}: "text" is an array, not a string'


def test_lone_surrogates_and_invalid_utf8_are_replaced_and_counted(tmp_path, spec):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "a fine document here and there"}\n{"text": "broken \\ud83d emoji"}\n')
    seen = []
    td = load(tmp_path, path, progress=seen.append)
    np.testing.assert_array_equal(stream(td), direct(spec, ["a fine document here and there", "broken \ufffd emoji"]))
    ready = [s for s in seen if s.stage == "ready"][-1]
    assert ready.replaced == 1 and ready.replaced_at == f"{path}: line 2"
    text = tmp_path / "t.txt"
    text.write_bytes(b"good line\n" * 8000 + b"bad \xff\xfe byte\n" + b"more\n" * 5)  # past the 64 KB sniff
    seen.clear()
    td = load(tmp_path, text, progress=seen.append)
    assert "bad \ufffd\ufffd byte" in D.load_tokenizer().decode(stream(td).tolist())
    ready = [s for s in seen if s.stage == "ready"][-1]
    assert ready.replaced == 2 and ready.replaced_at == f"{text}: line 8001"


def test_swapped_corpus_is_refused_until_put_back(tmp_path):
    from tritter.protocol.config import RunConfig

    corpus = tmp_path / "c.txt"
    corpus.write_text(PROSE * 30)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig(corpus=str(corpus))
    events = []
    first = D.load_run_data("r1", run_dir, config, tmp_path / "cache", events.append)
    ready = [e for e in events if e.stage == "ready"]
    assert ready and ready[-1].corpus_digest == first.corpus_digest and ready[-1].run_id == "r1"
    corpus.write_text(PROSE * 31)
    with pytest.raises(DataError) as error:
        D.load_run_data("r1", run_dir, config, tmp_path / "cache", events.append)
    assert str(error.value).startswith(f"refusing to resume: the corpus {corpus} changed")
    corpus.write_text(PROSE * 30)
    assert D.load_run_data("r1", run_dir, config, tmp_path / "cache", events.append).corpus_digest == first.corpus_digest
    other = tmp_path / "tok"
    write_tokenizer_folder(train_bpe(iter([PROSE]), vocab_size=280), other)
    with pytest.raises(DataError, match=r"refusing to resume: the tokenizer embedded changed"):
        D.load_run_data("r1", run_dir, RunConfig(corpus=str(corpus), tokenizer=str(other)), tmp_path / "cache", events.append)
