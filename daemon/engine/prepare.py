"""Parallel tokenization of a streamed corpus into on-disk token shards.

One reader thread walks the corpus (formats/corpus.py) and hands batches of ~``batch_chars``
characters of pieces to the main thread, which encodes each batch with
``Tokenizer.encode_batch_fast`` (the tokenizers library's Rust thread pool: every core, or
``RAYON_NUM_THREADS``; the GIL is released meanwhile, so reading overlaps encoding) and
appends the ids to fixed-size shards (formats/shards.py).  Memory is bounded by a few batches,
whatever the corpus size.  Measured against a process pool on the same cores, the thread pool
was as fast or faster (docs/data.md), so there are no worker processes.

Documents are separated by the tokenizer's end-of-text id, inserted here (never produced from
document text: ``encode_special_tokens``).  A killed build resumes at the cursor of its last
finished shard: pieces before it are read again (cheap) but not encoded.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tritter.formats.corpus import DataError
from tritter.formats.shards import DEFAULT_SHARD_TOKENS, ShardLock, ShardWriter, open_shards, token_dtype
from tritter.formats.tokenizer import TokenizerSpec

log = logging.getLogger("tritter.prepare")

def default_batch_chars(chunk_chars: int) -> int:
    """Characters handed to one encode_batch_fast call: 8 pieces per tokenizer thread (so every
    thread has work), at least 1 MB (so Python overhead stays small), and small enough that a
    batch takes a second or two, which paces the progress events."""
    threads = int(os.environ.get("RAYON_NUM_THREADS") or 0) or os.cpu_count() or 1
    return max(1 << 20, 8 * threads * chunk_chars)


REPORT_EVERY_S = 2.0


@dataclass(frozen=True)
class PrepareStatus:
    """Progress of a build: ``stage`` (hashing | checking | tokenizing | done | cached),
    input bytes done/total, tokens written, MB/s of input since this build started, seconds
    left (None when unknown), documents, characters replaced by U+FFFD and where the first was."""

    stage: str
    bytes_done: int
    bytes_total: int
    tokens: int = 0
    mb_per_s: float = 0.0
    eta_s: float | None = None
    documents: int = 0
    replaced: int = 0
    replaced_at: str = ""


class PieceSource(Protocol):
    """What the pipeline reads: ``for text, doc_start in source`` plus progress attributes."""

    bytes_done: int
    bytes_total: int
    documents: int
    replaced: int
    replaced_at: str

    def __iter__(self) -> Iterator[tuple[str, bool]]: ...


class _Batch:
    __slots__ = ("units", "texts", "starts", "bytes_done", "documents", "replaced", "replaced_at")

    def __init__(self) -> None:
        self.units: list[int] = []
        self.texts: list[str] = []
        self.starts: list[bool] = []
        self.bytes_done = self.documents = self.replaced = 0
        self.replaced_at = ""


_END = object()


def _produce(source: PieceSource, first_unit: int, batch_chars: int, out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: batches of pieces from unit ``first_unit`` on, then ``_END`` (or the error)."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        batch, chars = _Batch(), 0
        for unit, (text, start) in enumerate(source):
            if unit < first_unit:
                continue
            batch.units.append(unit)
            batch.texts.append(text)
            batch.starts.append(start)
            chars += len(text)
            if chars >= batch_chars:
                _stamp(batch, source)
                if not put(batch):
                    return
                batch, chars = _Batch(), 0
        _stamp(batch, source)
        if put(batch):
            put(_END)
    except BaseException as error:  # handed to the consumer, which raises it
        put(error)


def _stamp(batch: _Batch, source: PieceSource) -> None:
    batch.bytes_done, batch.documents = source.bytes_done, source.documents
    batch.replaced, batch.replaced_at = source.replaced, source.replaced_at


def build_shards(
    source: PieceSource,
    spec: TokenizerSpec,
    directory: Path,
    meta: dict,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_chars: int | None = None,
    progress: Callable[[PrepareStatus], None] | None = None,
    report_every_s: float = REPORT_EVERY_S,
) -> dict:
    """Tokenize ``source`` into the shard folder ``directory`` (resuming a killed build with the
    same ``meta["key"]``) and return its complete index.  ``progress`` gets a PrepareStatus at
    least every ``report_every_s`` seconds while encoding.  Raises DataError from the reader."""
    tok = spec.build()
    eot = spec.eot_id
    if batch_chars is None:
        batch_chars = default_batch_chars(getattr(source, "chunk_chars", 1 << 16))
    dtype = token_dtype(spec.ids)
    writer = ShardWriter(directory, dtype, shard_tokens, meta)
    if writer.resume_unit or writer.entries:
        log.info("resuming tokenization at shard %d (piece %d)", len(writer.entries), writer.resume_unit)
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    reader = threading.Thread(target=_produce, args=(source, writer.resume_unit, batch_chars, q, stop),
                              name="corpus-reader", daemon=True)
    reader.start()
    started = time.monotonic()
    last_report = 0.0
    first_bytes: int | None = None
    last: _Batch | None = None
    next_unit = writer.resume_unit
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            batch: _Batch = item
            last = batch
            if first_bytes is None:
                first_bytes = _first_bytes(batch, writer)
            encodings = tok.encode_batch_fast(batch.texts, add_special_tokens=False)
            state = {"bytes_done": batch.bytes_done, "documents": batch.documents}
            for unit, start, enc in zip(batch.units, batch.starts, encodings):
                ids = enc.ids
                if start and unit > 0:
                    ids = [eot, *ids]  # the separator in front of every document but the first
                arr = np.asarray(ids, dtype=dtype)
                offset = 0
                if unit == writer.resume_unit and writer.resume_skip:
                    offset = writer.resume_skip
                    arr = arr[offset:]
                writer.add(unit, arr, offset, state)
                next_unit = unit + 1
            now = time.monotonic()
            if progress is not None and now - last_report >= report_every_s:
                last_report = now
                progress(_status("tokenizing", batch, source.bytes_total, writer.tokens, first_bytes, now - started))
        totals = {"documents": last.documents if last else 0, "replaced": last.replaced if last else 0,
                  "replaced_at": last.replaced_at if last else "", "bytes": source.bytes_total}
        index = writer.finish(next_unit, {"bytes_done": source.bytes_total, "documents": totals["documents"]}, totals)
    except BaseException:
        stop.set()
        writer.abort()
        raise
    finally:
        stop.set()
        reader.join(timeout=5)
    if progress is not None and last is not None:
        progress(_status("done", last, source.bytes_total, writer.tokens, first_bytes, time.monotonic() - started))
    return index


def _first_bytes(batch: _Batch, writer: ShardWriter) -> int:
    """Bytes already done before this session's encoding (the resume point), for MB/s."""
    return int(writer.entries[-1]["bytes_done"]) if writer.entries else 0


def _status(stage: str, batch: _Batch, total: int, tokens: int, first_bytes: int | None, elapsed: float) -> PrepareStatus:
    done = batch.bytes_done if stage != "done" else total
    rate = (done - (first_bytes or 0)) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    return PrepareStatus(stage=stage, bytes_done=done, bytes_total=total, tokens=tokens, mb_per_s=rate / 1e6,
                         eta_s=eta, documents=batch.documents, replaced=batch.replaced, replaced_at=batch.replaced_at)


def cached_or_build(
    source_factory: Callable[[], PieceSource],
    spec: TokenizerSpec,
    directory: Path,
    meta: dict,
    **kwargs: object,
) -> tuple[object, dict]:
    """The shard folder's stream if it is complete, else build it first (under its lock, so
    concurrent runs on the same corpus tokenize it once).  Returns (TokenStream, index)."""
    opened = open_shards(directory)
    if opened is not None:
        return opened
    with ShardLock(directory):
        opened = open_shards(directory)  # another process may have finished it meanwhile
        if opened is None:
            build_shards(source_factory(), spec, directory, meta, **kwargs)  # type: ignore[arg-type]
            opened = open_shards(directory)
    if opened is None:
        raise DataError(f"token shards in {directory} are damaged right after writing them (disk problem?)")
    return opened


class DocumentSource:
    """A PieceSource over in-memory documents (the embedded corpus): each document is one or
    more pieces cut by formats.corpus.split_text; progress in UTF-8 bytes."""

    def __init__(self, documents: Iterable[str], bytes_total: int, chunk_chars: int) -> None:
        self._documents = documents
        self.bytes_total = bytes_total
        self.chunk_chars = chunk_chars
        self.bytes_done = self.documents = self.replaced = 0
        self.replaced_at = ""

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        from tritter.formats.corpus import split_text

        for doc in self._documents:
            self.documents += 1
            for i, piece in enumerate(split_text(doc, self.chunk_chars)):
                self.bytes_done += len(piece.encode("utf-8", "surrogatepass"))
                yield piece, i == 0
