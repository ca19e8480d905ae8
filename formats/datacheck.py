"""The cheap checks of ``--corpus``/``--tokenizer``/``--text-field`` that ``tritterd`` runs when a
run starts (on its own machine, where the paths are), so bad input is one line at
``tritterctl start`` rather than a failed run later.  What only a full read can find is
reported while tokenizing (docs/data.md, "Bad input").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tritter.formats.corpus import SNIFF_BYTES, DataError, check_field, list_corpus
from tritter.formats.tokenizer import load_tokenizer_spec

MAX_FIELD_CHECKS = 16  # JSONL/Parquet files whose field is checked at start (the rest while reading)
EMBEDDED_TOKENIZER_IDS = 8192


def check_data(corpus: str | None, tokenizer: str | None, text_field: str = "text") -> str | None:
    """Return one line saying what is wrong with the run's data options, or None.

    Checks: the tokenizer loads and has an end-of-text token; the corpus exists, is readable
    and sniffs (first 64 KB; 4 KB per file of a folder) as text, JSONL, Parquet or token
    files; the first JSONL record / the Parquet schema of up to 16 files has ``text_field``
    as a string; the first 64 KB of each token file hold ids the tokenizer has.
    """
    try:
        ids = EMBEDDED_TOKENIZER_IDS
        if tokenizer is not None:
            ids = load_tokenizer_spec(Path(tokenizer)).ids
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
    except DataError as error:
        return str(error)
    except (OSError, EOFError) as error:  # e.g. a truncated .gz
        return f"{corpus}: cannot read: {error}"
    except Exception as error:  # a corrupt .zst or Parquet file; anything else is a bug: raise
        if type(error).__module__.split(".")[0] not in ("zstd", "zstandard", "pyarrow"):
            raise
        return f"{corpus}: cannot read: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return None


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
