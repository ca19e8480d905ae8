"""Training data: the embedded corpus, the tokenizer, a token cache and batch samplers.

The token stream is documents joined by ``<|endoftext|>``; its last few percent is a
fixed held-out split that is never trained on. Sampling is a pure function of
``(seed, position)`` so a checkpoint only needs to store ``Batches.position``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import tokenizers
import torch
import zstandard

from tritter.formats.files import atomic_write

DEFAULT_VOCAB_SIZE = 8192
EOT = "<|endoftext|>"
PAD = "<|pad|>"
EMBEDDED_SOURCE = "embedded corpus"
# The embedded corpus file stores its books separated by this line.
EMBEDDED_SEPARATOR = EOT + "\n"

_CACHE_VERSION = 1  # bump when the token stream layout changes, to orphan old caches
_CHUNK_CHARS = 1 << 16  # encode_batch work unit; small enough to parallelise well
_BATCH_CHARS = 16 << 20  # text handed to one encode_batch call
_PROGRESS_BYTES = 20 << 20  # corpora above this report tokenising progress
_HELDOUT_FRACTION = 0.02
_HELDOUT_MIN = 65536
_TEXT_SUFFIXES = {".txt", ".md", ""}
# Split after a newline sitting between two non-space characters: the byte-level
# pre-tokenizer always makes such a newline its own piece, so chunked encoding
# yields exactly the ids that encoding the whole text would.
_SPLIT = re.compile(r"\S\n(?=\S)")


def _asset(name: str) -> bytes:
    return (resources.files("tritter.daemon") / "assets" / name).read_bytes()


def default_corpus_text() -> str:
    """The embedded public-domain corpus (see assets/CORPUS.md), books separated by EOT lines."""
    return zstandard.ZstdDecompressor().decompress(_asset("corpus.txt.zst")).decode("utf-8")


def split_embedded_documents(text: str) -> list[str]:
    return [doc for doc in text.split(EMBEDDED_SEPARATOR) if doc.strip()]


def load_tokenizer() -> tokenizers.Tokenizer:
    # A fresh object each call: Tokenizer is mutable (padding/truncation settings).
    return tokenizers.Tokenizer.from_str(_asset("tokenizer.json").decode("utf-8"))


@dataclass(frozen=True, eq=False)  # eq=False: array fields have no scalar ==
class TokenData:
    train: np.ndarray
    heldout: np.ndarray
    source: str
    digest: str


# --------------------------------------------------------------------------- corpus reading


def _corpus_files(path: Path) -> list[Path]:
    """Sorted text files under a folder, skipping hidden entries such as .git."""
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES:
            files.append(p)
    if not files:
        raise ValueError(f"corpus folder has no text files (*.txt, *.md or extensionless): {path}")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read corpus file {path}: {e.strerror or e}") from None


def _decode(data: bytes, path: Path) -> str:
    if b"\x00" in data:
        raise ValueError(f"corpus file looks binary (contains NUL bytes): {path}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file is not UTF-8 text (bad byte at offset {e.start}): {path}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_documents(data: bytes, path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_decode(data, path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {lineno}: not valid JSON") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(f'{path}: line {lineno}: no string "text" field')
        if text.strip():
            docs.append(text.replace("\r\n", "\n"))
    return docs


def read_corpus_documents(path: Path) -> list[str]:
    """Documents of a user corpus: a text file, a folder of text files, or a .jsonl file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"corpus not found: {path}")
    if path.is_dir():
        docs = []
        for f in _corpus_files(path):
            data = _read_bytes(f)
            if f.suffix == "" and (b"\x00" in data or not _is_utf8(data)):
                continue  # extensionless binaries (e.g. stray executables) are not documents
            text = _decode(data, f)
            if text.strip():
                docs.append(text)
    elif path.suffix.lower() == ".jsonl":
        docs = _jsonl_documents(_read_bytes(path), path)
    else:
        text = _decode(_read_bytes(path), path)
        docs = [text] if text.strip() else []
    if not docs:
        raise ValueError(f"corpus is empty: {path}")
    return docs


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _corpus_sha256(path: Path) -> str:
    """Content hash of a user corpus, streamed so a cache hit never holds the text in memory."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"corpus not found: {path}")
    files = _corpus_files(path) if path.is_dir() else [path]
    h = hashlib.sha256(b"corpus\0" + (b"dir" if path.is_dir() else path.suffix.lower().encode()))
    for f in files:
        name = f.relative_to(path).as_posix().encode() if path.is_dir() else b""
        h.update(b"\0" + name + b"\0")  # names matter: renaming reorders documents
        try:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise ValueError(f"cannot read corpus file {f}: {e.strerror or e}") from None
    return h.hexdigest()


# --------------------------------------------------------------------------- tokenising


def _chunks(text: str) -> Iterator[str]:
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        m = _SPLIT.search(text, start + _CHUNK_CHARS)
        if m is None:
            break  # no safe split point left: encode the rest whole
        yield text[start : m.end()]
        start = m.end()
    yield text[start:]


def encode_documents(tok: tokenizers.Tokenizer, docs: list[str], label: str = "") -> np.ndarray:
    """Token ids of ``docs`` joined by EOT, encoded in parallel batches of chunks."""
    eot = tok.token_to_id(EOT)
    dtype = np.dtype("<u2") if tok.get_vocab_size() <= 65536 else np.dtype("<u4")
    total = sum(len(d) for d in docs)
    report = total > _PROGRESS_BYTES
    parts: list[np.ndarray] = []
    pending: list[str] = []
    pending_chars = done = 0

    def flush() -> None:
        nonlocal pending, pending_chars, done
        for enc in tok.encode_batch(pending, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
        done += pending_chars
        pending, pending_chars = [], 0
        if report:
            print(f"tokenizing {label}: {done / 1e6:.0f}/{total / 1e6:.0f} MB chars", file=sys.stderr, flush=True)

    for i, doc in enumerate(docs):
        if i:
            # The separator goes in as its own one-token "chunk" so order is preserved.
            if pending:
                flush()
            parts.append(np.asarray([eot], dtype=dtype))
        for chunk in _chunks(doc):
            pending.append(chunk)
            pending_chars += len(chunk)
            if pending_chars >= _BATCH_CHARS:
                flush()
    if pending:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- cache


def _sha256_array(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    step = 1 << 24
    for i in range(0, len(arr), step):  # chunked so a memmap is paged in gradually
        h.update(np.ascontiguousarray(arr[i : i + step]).tobytes())
    return h.hexdigest()


def _load_cache(npy: Path, meta_path: Path) -> tuple[np.ndarray, str] | None:
    if not npy.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode="r")
        ok = (
            meta.get("version") == _CACHE_VERSION
            and arr.ndim == 1
            and arr.dtype.str == meta["dtype"]
            and len(arr) == meta["length"]
            and _sha256_array(arr) == meta["sha256"]
        )
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        print(f"token cache {npy} is corrupt or stale; rebuilding", file=sys.stderr)
        return None
    return arr, meta["sha256"]


def _write_cache(npy: Path, meta_path: Path, tokens: np.ndarray, sha: str, source: str) -> None:
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: np.save(f, tokens, allow_pickle=False))
    meta = {"version": _CACHE_VERSION, "length": int(len(tokens)), "dtype": tokens.dtype.str, "sha256": sha, "source": source}
    # Sidecar last: a crash in between leaves no sidecar, which reads as "rebuild".
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))


# --------------------------------------------------------------------------- public loader


def heldout_size(n_tokens: int) -> int:
    """~2% of the stream, raised to 64k tokens when that still leaves 90% for training."""
    return max(math.ceil(n_tokens * _HELDOUT_FRACTION), min(_HELDOUT_MIN, n_tokens // 10))


def load_token_data(cache_dir: Path | None = None, corpus: Path | None = None) -> TokenData:
    """Tokenize the embedded corpus (``corpus=None``) or a user corpus, using the cache if any."""
    tok_json = _asset("tokenizer.json")
    if corpus is None:
        source = EMBEDDED_SOURCE
        corpus_sha = hashlib.sha256(b"embedded\0" + _asset("corpus.txt.zst")).hexdigest()
    else:
        source = str(corpus)
        corpus_sha = _corpus_sha256(Path(corpus))
    key = hashlib.sha256(f"{_CACHE_VERSION}:{corpus_sha}:".encode() + hashlib.sha256(tok_json).digest()).hexdigest()

    cached = None
    if cache_dir is not None:
        npy = Path(cache_dir) / f"tokens-{key[:32]}.npy"
        meta_path = npy.with_suffix(".json")
        cached = _load_cache(npy, meta_path)
    if cached is not None:
        tokens, sha = cached
    else:
        docs = split_embedded_documents(default_corpus_text()) if corpus is None else read_corpus_documents(Path(corpus))
        tok = tokenizers.Tokenizer.from_str(tok_json.decode("utf-8"))
        tokens = encode_documents(tok, docs, label=source)
        sha = _sha256_array(tokens)
        if cache_dir is not None:
            _write_cache(npy, meta_path, tokens, sha, source)

    n = len(tokens)
    if n < 20:
        raise ValueError(f"corpus too small: {n} tokens (need at least 20): {source}")
    split = n - heldout_size(n)
    return TokenData(train=tokens[:split], heldout=tokens[split:], source=source, digest=sha[:16])


# --------------------------------------------------------------------------- batches


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # one vectorised gather
    chunk = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class Batches:
    """Deterministic, stateless-by-position sampler: sequence windows of length seq_len+1 taken at stride seq_len over `train`,
    visited in a per-epoch permutation seeded by (seed, epoch). `position` counts sequences consumed so far; it is the only
    state and is what a checkpoint stores, so resume is exact."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, position: int = 0) -> None:
        if tokens.ndim != 1:
            raise ValueError("tokens must be a 1-D array")
        if batch_size < 1 or seq_len < 1 or position < 0:
            raise ValueError("batch_size and seq_len must be >= 1 and position >= 0")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"training split has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.position = position
        self.windows_per_epoch = (len(tokens) - 1) // seq_len
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.position // self.windows_per_epoch

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            # PCG64 seeded by the (seed, epoch) pair: independent shuffles per epoch,
            # reproducible on any machine without storing anything but `position`.
            perm = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.windows_per_epoch)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def peek_at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch that `next()` returns when `self.position == position`; no state change."""
        pos = position + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.windows_per_epoch)
        window = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):  # at most two epochs unless batch > epoch
            sel = epochs == e
            window[sel] = self._perm(int(e))[offsets[sel]]
        return _windows(self.tokens, window * self.seq_len, self.seq_len)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.peek_at(self.position)
        self.position += self.batch_size
        return batch


def heldout_batches(data: TokenData, batch_size: int, seq_len: int, max_batches: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: non-overlapping windows spread evenly over the held-out split."""
    available = len(data.heldout) // (seq_len + 1)
    if available == 0:
        raise ValueError(f"held-out split has {len(data.heldout)} tokens, fewer than seq_len+1 = {seq_len + 1}")
    n = min(available, batch_size * max_batches)
    starts = (np.arange(n, dtype=np.int64) * available // n) * (seq_len + 1)
    return [_windows(data.heldout, starts[i : i + batch_size], seq_len) for i in range(0, n, batch_size)]
