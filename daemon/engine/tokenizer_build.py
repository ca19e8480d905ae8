"""Rebuild ``daemon/assets/tokenizer.json`` from the embedded corpus.

Run ``python -m tritter.daemon.engine.tokenizer_build`` (optionally ``--out PATH``).
The result is a byte-level BPE (GPT-2 style, no prefix space, no normalizer) with
vocab size 8192 and special tokens ``<|endoftext|>`` (id 0) and ``<|pad|>`` (id 1).

The build is deterministic: the input is the fixed embedded corpus, fed one book at
a time in file order, and the BPE trainer breaks count ties by pair order, so
rerunning produces a byte-identical ``tokenizer.json``. Changing the tokenizer
changes its sha256, which invalidates every token cache keyed on it (see ``data.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenizers import Tokenizer

from tritter.daemon.engine.data import (
    DEFAULT_VOCAB_SIZE,
    EOT,
    PAD,
    default_corpus_text,
    split_embedded_documents,
)
from tritter.formats.tokenizer import train_bpe

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def build_tokenizer(documents: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE on ``documents`` (each document one training string): the same
    trainer as ``tritterctl tokenizer train`` (formats.tokenizer.train_bpe)."""
    tok = train_bpe(iter(documents), vocab_size)
    assert tok.token_to_id(EOT) == 0 and tok.token_to_id(PAD) == 1
    return tok


def main(argv: list[str] | None = None) -> int:
    """Command line: train the embedded tokenizer (vocab 8192) and write it to ``--out``
    (default ``daemon/assets/tokenizer.json``); returns exit status 0.  Raises OSError if it cannot write.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "tokenizer.json")
    args = parser.parse_args(argv)
    tok = build_tokenizer(split_embedded_documents(default_corpus_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out), pretty=False)
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
