"""Training data: the corpus as a token stream on disk, the tokenizer, and batch samplers.

The token stream is the corpus's documents joined by the tokenizer's end-of-text token,
tokenized once into fixed-size shards under the cache folder (daemon/engine/prepare.py,
formats/shards.py) and read back through memory maps, so memory does not grow with the
corpus.  Its last few percent is a fixed held-out split that is never trained on.  Sampling
is a pure function of ``(seed, position)`` so a checkpoint only needs ``Batches.position``.

Inputs (formats/corpus.py, docs/data.md): the embedded corpus (default), a text file, a
folder, JSONL (plain/.gz/.zst), Parquet, or pre-tokenized ``.bin``/``.npy`` used as is.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import tokenizers
import torch
import xxhash
import zstandard

from tritter.daemon.engine.prepare import DocumentSource, PrepareStatus, cached_or_build
from tritter.formats.files import atomic_write
from tritter.formats.corpus import CHUNK_CHARS, MIN_TOKENS, CorpusFile, CorpusReader, DataError, corpus_digest, list_corpus
from tritter.formats.shards import DEFAULT_SHARD_TOKENS, TokenStream, stream_digest
from tritter.formats.tokenizer import EOT, PAD, TokenizerSpec, load_tokenizer_spec, model_vocab_size, spec_from_json
from tritter.protocol.config import RunConfig
from tritter.protocol.events import PrepareEvent

DEFAULT_VOCAB_SIZE = 8192
EMBEDDED_SOURCE = "embedded corpus"
# The embedded corpus file stores its books separated by this line.
EMBEDDED_SEPARATOR = EOT + "\n"

# Bump when the token stream layout changes, to orphan old caches.  v2: shards (v1 was one .npy).
_CACHE_VERSION = 2
_HELDOUT_FRACTION = 0.02
_HELDOUT_MIN = 65536
_HELDOUT_MAX = 10_000_000  # eval reads a few hundred windows; 2% of 20B tokens would be waste
_MIN_TOKENS = MIN_TOKENS  # formats.corpus: the start-time check refuses the same
_TOKEN_CHECK_BLOCK = 1 << 24

__all__ = ["DataError", "EOT", "PAD", "TokenData", "Batches", "heldout_batches", "load_token_data", "load_tokenizer"]


def _asset(name: str) -> bytes:
    return (resources.files("tritter.daemon") / "assets" / name).read_bytes()


def default_corpus_text() -> str:
    """The embedded public-domain corpus (see assets/CORPUS.md), books separated by EOT lines."""
    return zstandard.ZstdDecompressor().decompress(_asset("corpus.txt.zst")).decode("utf-8")


def split_embedded_documents(text: str) -> list[str]:
    """The embedded corpus text as its six books."""
    return [doc for doc in text.split(EMBEDDED_SEPARATOR) if doc.strip()]


@functools.cache  # immutable; parsing the 237 KB json costs ~0.1 s
def embedded_tokenizer_spec() -> TokenizerSpec:
    """The default tokenizer (daemon/assets/tokenizer.json): byte-level BPE, 8192 ids,
    ``<|endoftext|>`` = 0, ``<|pad|>`` = 1."""
    return spec_from_json(_asset("tokenizer.json").decode("utf-8"), "embedded", EOT, PAD)


def tokenizer_spec(path: str | Path | None) -> TokenizerSpec:
    """``--tokenizer PATH`` (None: the embedded one).  Raises DataError."""
    return embedded_tokenizer_spec() if path is None else load_tokenizer_spec(Path(path))


def load_tokenizer() -> tokenizers.Tokenizer:
    """The embedded tokenizer, a fresh object each call (Tokenizer is mutable: padding and
    truncation settings); document text never becomes a special id (``encode_special_tokens``)."""
    return embedded_tokenizer_spec().build()


@dataclass(frozen=True, eq=False)  # eq=False: array fields have no scalar ==
class TokenData:
    """A tokenized corpus.  ``train``/``heldout``: 1-D token streams (TokenStream over shard
    memmaps, or numpy arrays); ``source``: the corpus path or "embedded corpus"; ``digest``:
    16 hex of the token stream; ``corpus_digest``/``tokenizer_digest``: the corpus content and
    tokenizer identity a resume checks; ``vocab_size``: the model's vocabulary (the tokenizer's
    ids rounded up to 64); ``tokenizer``: a ``tokenizers.Tokenizer`` for decoding samples."""

    train: np.ndarray | TokenStream
    heldout: np.ndarray | TokenStream
    source: str
    digest: str
    corpus_digest: str = ""
    tokenizer_digest: str = ""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    tokenizer: tokenizers.Tokenizer | None = None
    tokenizer_spec: TokenizerSpec | None = None
    info: dict = field(default_factory=dict)

    def identity(self) -> dict[str, str | int]:
        """What a checkpoint records so that a resume can refuse other data."""
        return {"corpus": self.source, "corpus_digest": self.corpus_digest,
                "tokenizer": self.tokenizer_spec.source if self.tokenizer_spec else "",
                "tokenizer_digest": self.tokenizer_digest, "vocab_size": self.vocab_size}


def identity_change(recorded: object, data: TokenData) -> str | None:
    """One line naming what changed between a recorded identity (``TokenData.identity()`` of an
    earlier session) and ``data``, or None when it is the same data (or nothing was recorded)."""
    if not isinstance(recorded, dict):
        return None
    now = data.identity()
    changed = []
    if recorded.get("corpus_digest") and recorded["corpus_digest"] != now["corpus_digest"]:
        changed.append(f"the corpus {recorded.get('corpus') or now['corpus']} changed "
                       f"(content digest {str(recorded['corpus_digest'])[:12]} -> {str(now['corpus_digest'])[:12]})")
    if recorded.get("tokenizer_digest") and recorded["tokenizer_digest"] != now["tokenizer_digest"]:
        changed.append(f"the tokenizer {recorded.get('tokenizer') or now['tokenizer']} changed "
                       f"(digest {str(recorded['tokenizer_digest'])[:12]} -> {str(now['tokenizer_digest'])[:12]})")
    if not changed:
        return None
    return ("refusing to resume: " + " and ".join(changed)
            + "; put the original back to resume this run, or start a new run on the new data")


# --------------------------------------------------------------------------- public loader


def heldout_size(n_tokens: int) -> int:
    """~2% of the stream, raised to 64k tokens when that still leaves 90% for training, at most 10M."""
    return min(max(math.ceil(n_tokens * _HELDOUT_FRACTION), min(_HELDOUT_MIN, n_tokens // 10)), _HELDOUT_MAX)


def _key(*parts: object) -> str:
    return xxhash.xxh3_128(json.dumps([_CACHE_VERSION, *parts]).encode()).hexdigest()


def _check_token_ids(files: list[CorpusFile], ids: int, progress: Callable[[PrepareStatus], None] | None) -> list[np.ndarray]:
    """Memmaps of pre-tokenized files, each checked to be 1-D integers below ``ids``.  Raises DataError."""
    arrays = []
    total = sum(f.path.stat().st_size for f in files)
    done = 0
    for cf in files:
        arr = open_token_file(cf.path)
        for lo in range(0, len(arr), _TOKEN_CHECK_BLOCK):
            block = np.asarray(arr[lo : lo + _TOKEN_CHECK_BLOCK])
            bad = np.flatnonzero((block >= ids) | (block < 0)) if block.dtype.kind == "i" else np.flatnonzero(block >= ids)
            if len(bad):
                i = int(bad[0])
                raise DataError(f"{cf.path}: token {lo + i}: id {int(block[i])} does not fit the tokenizer (ids 0..{ids - 1}); "
                                "pass the tokenizer these ids came from with --tokenizer")
            if progress is not None:
                progress(PrepareStatus("checking", done + (lo + len(block)) * arr.itemsize, total))
        done += cf.path.stat().st_size
        arrays.append(arr)
    return arrays


def open_token_file(path: Path) -> np.ndarray:
    """A pre-tokenized file as a read-only memmap: ``.bin`` = flat little-endian uint16
    (nanoGPT), ``.npy`` = any 1-D integer array.  Raises DataError."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise DataError(f"{path}: a token .npy must be a 1-D integer array, this one is {arr.ndim}-D {arr.dtype}")
            return arr
        size = path.stat().st_size
        if size % 2:
            raise DataError(f"{path}: {size} bytes is not a whole number of uint16 tokens (.bin is flat little-endian uint16)")
        return np.memmap(path, dtype="<u2", mode="r") if size else np.zeros(0, dtype="<u2")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable token file ({str(e).splitlines()[0]})") from None


def load_token_data(
    cache_dir: Path | None = None,
    corpus: Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    text_field: str = "text",
    progress: Callable[[PrepareStatus], None] | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_chars: int = CHUNK_CHARS,
    batch_chars: int | None = None,
) -> TokenData:
    """Tokenize the embedded corpus (``corpus=None``) or a user corpus into shards under
    ``cache_dir`` (reused when the corpus content, tokenizer and options are the same; a
    killed build resumes), and split off the held-out tail.

    ``tokenizer``: ``--tokenizer PATH`` (None: embedded); ``text_field``: the JSONL/Parquet
    field; ``progress``: called with PrepareStatus while hashing/tokenizing.  Without
    ``cache_dir`` the shards go to a temporary folder and are read into memory (tests, small
    corpora).  ``shard_tokens``/``chunk_chars``/``batch_chars``: see formats/shards.py,
    formats/corpus.py, prepare.py (tests make them small).  Raises DataError (one line).
    """
    spec = tokenizer_spec(tokenizer)
    tok_ids = spec.ids
    if corpus is None:
        source = EMBEDDED_SOURCE
        asset = _asset("corpus.txt.zst")
        cdigest = xxhash.xxh3_128(b"embedded\0" + asset).hexdigest()

        def factory():
            text = default_corpus_text()
            return DocumentSource(split_embedded_documents(text), len(text.encode()), chunk_chars)

        files: list[CorpusFile] = []
    else:
        source = str(corpus)
        files = list_corpus(Path(corpus))
        memo = Path(cache_dir) / "corpus-digests.json" if cache_dir is not None else None
        hashing = (lambda done, total: progress(PrepareStatus("hashing", done, total))) if progress else None
        cdigest = corpus_digest(files, memo, hashing)

        def factory():
            return CorpusReader(files, text_field, chunk_chars)

    if files and files[0].kind == "tokens":
        digest = _key("tokens", cdigest)
        # The id check reads every token once; remembered per corpus content and tokenizer size.
        marker = Path(cache_dir) / f"checked-{_key(cdigest, tok_ids)[:32]}" if cache_dir is not None else None
        if marker is not None and marker.exists():
            stream: TokenStream | np.ndarray = TokenStream([open_token_file(f.path) for f in files])
        else:
            stream = TokenStream(_check_token_ids(files, tok_ids, progress))
            if marker is not None:
                atomic_write(marker, b"ok\n", durable=False)
        info: dict = {"tokens": len(stream), "pretokenized": True}
    else:
        key = _key(cdigest, spec.digest, text_field, chunk_chars)
        tmp = None
        if cache_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="tritter-tokens-"))
            directory = tmp
        else:
            directory = Path(cache_dir) / f"tokens-{key[:32]}"
        try:
            meta = {"key": key, "source": source, "corpus_digest": cdigest, "tokenizer": spec.source,
                    "tokenizer_digest": spec.digest, "text_field": text_field}
            stream, info = cached_or_build(factory, spec, directory, meta, shard_tokens=shard_tokens, progress=progress,
                                           batch_chars=batch_chars)  # type: ignore[assignment]
            if tmp is not None:
                stream = np.asarray(stream)  # read into memory before the folder goes
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        digest = stream_digest(info)
    n = len(stream)
    if n == 0:
        raise DataError(f"corpus is empty (no text): {source}")
    if n < _MIN_TOKENS:
        raise DataError(f"corpus too small: {n} tokens (need at least {_MIN_TOKENS}): {source}")
    if progress is not None:
        progress(PrepareStatus("ready", info.get("bytes", 0), info.get("bytes", 0), tokens=n,
                               documents=int(info.get("documents", 0)), replaced=int(info.get("replaced", 0)),
                               replaced_at=str(info.get("replaced_at", ""))))
    split = n - heldout_size(n)
    return TokenData(
        train=stream[:split], heldout=stream[split:], source=source, digest=digest[:16], corpus_digest=cdigest,
        tokenizer_digest=spec.digest, vocab_size=model_vocab_size(tok_ids), tokenizer=spec.build(),
        tokenizer_spec=spec, info={k: v for k, v in info.items() if k != "shards"},
    )


# --------------------------------------------------------------------------- a run's data

IDENTITY_FILE = "data.json"  # in the run folder: the identity of the data the run started on


def prepare_event(status: PrepareStatus, data: TokenData | None = None) -> PrepareEvent:
    """A ``prepare`` event for ``status``; with ``data``, the ``ready`` event naming its identity."""
    event = PrepareEvent(
        stage=status.stage, bytes_done=status.bytes_done, bytes_total=status.bytes_total, tokens=status.tokens,  # type: ignore[arg-type]
        mb_per_s=round(status.mb_per_s, 3), eta_s=None if status.eta_s is None else round(status.eta_s, 1),
        documents=status.documents, replaced=status.replaced, replaced_at=status.replaced_at,
    )
    if data is not None:
        event.corpus_digest, event.tokenizer_digest, event.vocab_size = data.corpus_digest, data.tokenizer_digest, data.vocab_size
    return event


def load_run_data(
    run_id: str, run_dir: Path, config: RunConfig, cache_dir: Path | None, emit: Callable[[PrepareEvent], None],
    min_interval_s: float = 1.0,
) -> TokenData:
    """The token data of a run (``config.corpus``/``tokenizer``/``text_field``), reporting
    ``prepare`` events through ``emit`` (at most one a second per stage, plus ``ready``), and
    checked against the identity recorded in ``run_dir/data.json`` when the run started: a
    changed corpus or tokenizer raises DataError naming it (the file is left as it was, so the
    run resumes once the original data is back).  Writes that file on a run's first load."""
    last: dict[str, float] = {}

    def report(status: PrepareStatus) -> None:
        now = time.monotonic()
        if status.stage in ("tokenizing", "hashing", "checking") and now - last.get(status.stage, -1e9) < min_interval_s:
            return
        last[status.stage] = now
        if status.stage != "ready":
            _emit_prepare(emit, run_id, prepare_event(status))
        else:
            ready.append(status)

    ready: list[PrepareStatus] = []
    data = load_token_data(cache_dir, config.corpus and Path(config.corpus), tokenizer=config.tokenizer,
                           text_field=config.text_field, progress=report)
    path = Path(run_dir) / IDENTITY_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        recorded = None
        atomic_write(path, (json.dumps(data.identity(), indent=1) + "\n").encode())
    except (OSError, ValueError):
        recorded = None  # unreadable: the checkpoints' own record still guards the resume
    problem = identity_change(recorded, data)
    if problem:
        raise DataError(problem)
    if ready:
        _emit_prepare(emit, run_id, prepare_event(ready[-1], data))
    return data


def _emit_prepare(emit: Callable[[PrepareEvent], None], run_id: str, event: PrepareEvent) -> None:
    event.run_id, event.ts = run_id, time.time()
    emit(event)


# --------------------------------------------------------------------------- batches


def _windows(tokens: np.ndarray | TokenStream, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 tensors of shape (len(starts), seq_len): windows of seq_len+1 tokens, shifted by one."""
    if isinstance(tokens, TokenStream):  # shards: one contiguous slice per row, straight into the tensor
        chunk = torch.empty((len(starts), seq_len + 1), dtype=torch.int64)
        tokens.windows(starts, seq_len + 1, out=chunk.numpy())
    else:
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # one vectorised gather
        chunk = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class Batches:
    """Deterministic, stateless-by-position sampler: sequence windows of length seq_len+1 taken at stride seq_len over `train`,
    visited in a per-epoch permutation seeded by (seed, epoch). `position` counts sequences consumed so far; it is the only
    state and is what a checkpoint stores, so resume is exact.

    ``prefetch``: after each ``next()`` a background thread already builds the batch at the new
    position (a pure function of it, so the batches are the same), hiding the sampler behind
    the training step; numpy's copies release the GIL."""

    def __init__(
        self, tokens: np.ndarray | TokenStream, batch_size: int, seq_len: int, seed: int, position: int = 0,
        prefetch: bool = False,
    ) -> None:
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
        self._prefetch = prefetch
        self._pending: tuple[int, Future] | None = None

    @property
    def epoch(self) -> int:
        """The 0-based epoch of the next batch: ``position // windows_per_epoch`` (windows of ``seq_len + 1`` tokens)."""
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
        """The batch at ``position`` (x, y: int64, batch_size x seq_len); advances ``position``."""
        batch = None
        if self._pending is not None:
            at, future = self._pending
            self._pending = None
            if at == self.position:  # position is public: a caller may have moved it
                batch = future.result()
        if batch is None:
            batch = self.peek_at(self.position)
        self.position += self.batch_size
        if self._prefetch:
            self._pending = (self.position, _prefetcher().submit(self.peek_at, self.position))
        return batch


@functools.cache
def _prefetcher() -> ThreadPoolExecutor:
    """One background thread for batch prefetching (the sampler is cheap; one is plenty)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch")


def heldout_batches(data: TokenData, batch_size: int, seq_len: int, max_batches: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: non-overlapping windows spread evenly over the held-out split."""
    available = len(data.heldout) // (seq_len + 1)
    if available == 0:
        raise ValueError(f"held-out split has {len(data.heldout)} tokens, fewer than seq_len+1 = {seq_len + 1}")
    n = min(available, batch_size * max_batches)
    starts = (np.arange(n, dtype=np.int64) * available // n) * (seq_len + 1)
    return [_windows(data.heldout, starts[i : i + batch_size], seq_len) for i in range(0, n, batch_size)]
