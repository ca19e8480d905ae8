"""The cheap checks of ``--corpus``/``--tokenizer``/``--text-field`` that ``tritterd`` runs when a
run starts (on its own machine, where the paths are), so bad input is one line at
``tritterctl start`` rather than a failed run later.  What only a full read can find is
reported while tokenizing (docs/data.md, "Bad input").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tritter.formats.corpus import (
    MIN_TOKENS,
    SNIFF_BYTES,
    CorpusFile,
    DataError,
    check_field,
    list_corpus,
    probe_documents,
)
from tritter.formats.tokenizer import TokenizerSpec, load_tokenizer_spec
from tritter.protocol.oserrors import error_reason

MAX_FIELD_CHECKS = 16  # JSONL/Parquet files whose field is checked at start (the rest while reading)
EMBEDDED_TOKENIZER_IDS = 8192


def check_data(corpus: str | None, tokenizer: str | None, text_field: str = "text",
               default_tokenizer: Path | None = None) -> str | None:
    """Return one line saying what is wrong with the run's data options, or None.

    Checks: the tokenizer loads and has an end-of-text token; the corpus exists, is readable
    and sniffs (first 64 KB; 4 KB per file of a folder) as text, JSONL, Parquet or token
    files; the first JSONL record / the Parquet schema of up to 16 files has ``text_field``
    as a string; the first 64 KB of each token file hold ids the tokenizer has; the corpus
    is not empty or too small to train (``check_corpus_size``).  ``default_tokenizer``: the
    tokenizer.json used without ``tokenizer`` (the daemon's embedded one), to count a small
    corpus's tokens; None skips that count.
    """
    try:
        ids = EMBEDDED_TOKENIZER_IDS
        spec = None
        if tokenizer is not None:
            spec = load_tokenizer_spec(Path(tokenizer))
            ids = spec.ids
        elif default_tokenizer is not None:
            spec = load_tokenizer_spec(default_tokenizer)
        if corpus is None:
            return None
        files = list_corpus(Path(corpus))
        checked = 0
        for cf in files:
            if cf.kind in ("jsonl", "parquet") and checked < MAX_FIELD_CHECKS:
                check_field(cf, text_field)
                checked += 1
            elif cf.kind == "tokens" and checked < MAX_FIELD_CHECKS:
                _check_token_head(cf.path, ids)
                checked += 1
        check_corpus_size(files, corpus, text_field, spec)
    except DataError as error:
        return str(error)
    except (OSError, EOFError) as error:  # e.g. a truncated .gz
        return f"{corpus}: cannot read: {error_reason(error)}"
    except Exception as error:  # a corrupt .zst or Parquet file; anything else is a bug: raise
        if type(error).__module__.split(".")[0] not in ("zstd", "zstandard", "pyarrow"):
            raise
        return f"{corpus}: cannot read: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return None


def check_corpus_size(files: list[CorpusFile], source: str, text_field: str = "text",
                      spec: TokenizerSpec | None = None) -> None:
    """Refuse a corpus with no text, or (when ``spec`` is given) one that makes fewer than
    ``MIN_TOKENS`` tokens, with the lines the run would fail with later (daemon/engine/data.py).

    Bounded: a pre-tokenized corpus is sized from file headers; text is read with
    ``probe_documents`` (at most 256 KB from 256 files), and only a corpus that small is judged:
    for a bigger one nothing is concluded (a full read would be needed).  ``source``: the
    corpus as the user named it, for the message.  Raises DataError (one line).
    """
    if files[0].kind == "tokens":
        tokens = sum(_token_count(cf.path) for cf in files)
    else:
        probe = probe_documents(files, text_field)
        if not probe.complete:
            return
        if not probe.found:
            raise DataError(f"corpus is empty (no text): {source}")
        if spec is None:
            return
        tok = spec.build()
        encodings = tok.encode_batch_fast([text for text, _ in probe.pieces], add_special_tokens=False)
        # as daemon/engine/prepare.py: the end-of-text separator in front of every document but the first
        tokens = sum(len(e.ids) for e in encodings) + sum(1 for i, (_, start) in enumerate(probe.pieces) if start and i)
    if tokens == 0:
        raise DataError(f"corpus is empty (no text): {source}")
    if tokens < MIN_TOKENS:
        raise DataError(f"corpus too small: {tokens} tokens (need at least {MIN_TOKENS}): {source}")


def _token_count(path: Path) -> int:
    """Tokens in a .bin (size / 2) or a 1-D .npy (its header's shape), without reading the ids."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable token file ({str(e).splitlines()[0]})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise DataError(f"{path}: a token .npy must be a 1-D integer array, this one is {arr.ndim}-D {arr.dtype}")
        return int(arr.shape[0])
    return path.stat().st_size // 2


def _check_token_head(path: Path, ids: int) -> None:
    """The first 64 KB of a .bin/.npy token file hold ids below ``ids``.  Raises DataError."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise DataError(f"{path}: a token .npy must be a 1-D integer array, this one is {arr.ndim}-D {arr.dtype}")
            head = np.asarray(arr[: SNIFF_BYTES // arr.itemsize])
        else:
            size = path.stat().st_size
            if size % 2:
                raise DataError(f"{path}: {size} bytes is not a whole number of uint16 tokens (.bin is flat little-endian uint16)")
            with open(path, "rb") as f:
                head = np.frombuffer(f.read(SNIFF_BYTES), dtype="<u2")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable token file ({str(e).splitlines()[0]})") from None
    if head.size and (int(head.max()) >= ids or int(head.min()) < 0):
        bad = int(np.flatnonzero((head >= ids) | (head < 0))[0])
        raise DataError(f"{path}: token {bad}: id {int(head[bad])} does not fit the tokenizer (ids 0..{ids - 1}); "
                        "pass the tokenizer these ids came from with --tokenizer")
