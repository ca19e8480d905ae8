"""``tritterctl tokenizer train`` (runs here, no daemon) and the one-line view of corpus
preparation (``prepare`` events) that ``tritterctl status``/``events`` and the TUI show."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tritter.clients.outputs import check_output_folder
from tritter.formats.corpus import CorpusReader, DataError, list_corpus
from tritter.formats.datacheck import check_corpus_size
from tritter.formats.text import fmt_duration
from tritter.formats.tokenizer import MAX_VOCAB, MIN_VOCAB, model_vocab_size, train_bpe, write_tokenizer_folder
from tritter.protocol.cli_args import bounded_int


def add_tokenizer_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``tokenizer train --corpus PATH --vocab-size N -o DIR [--text-field F] [--max-chars N]``."""
    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer for --tokenizer (runs locally)")
    # the same parser class as tritterctl's (errors as one line)
    tsub = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND",
                                    parser_class=sub._parser_class)  # type: ignore[attr-defined]
    train = tsub.add_parser("train", help="train on a corpus; writes a folder --tokenizer and AutoTokenizer load")
    train.add_argument("--corpus", type=Path, required=True, help="the same forms as start --corpus (not .bin/.npy)")
    train.add_argument("--vocab-size", type=bounded_int(MIN_VOCAB, MAX_VOCAB, "a vocabulary size"), required=True, metavar="N",
                       help="ids including <|endoftext|> and <|pad|> (the model rounds up to a multiple of 64)")
    train.add_argument("-o", "--out", type=Path, required=True, metavar="DIR",
                       help="output folder (created; an existing non-empty one only with --force)")
    train.add_argument("-f", "--force", action="store_true",
                       help="replace the tokenizer in an existing DIR (atomically: a failed or interrupted train keeps the old one)")
    train.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field / Parquet column (default text)")
    train.add_argument("--min-frequency", type=bounded_int(0, 1 << 62, "a count"), default=2, metavar="N", help="merges seen fewer times are dropped (default 2)")
    train.add_argument("--max-chars", type=bounded_int(0, 1 << 62, "a character count"), default=0, metavar="N",
                       help="train on the first N characters only (0 = the whole corpus)")


def run_tokenizer(args: argparse.Namespace) -> int:
    """Train and write the tokenizer; print one summary line.

    Everything known before training is checked first, and nothing is written unless training
    succeeded: an existing non-empty ``-o`` without ``--force`` or ``-o`` naming the corpus
    (OutputRefused), a corpus that ``start`` would refuse, a pre-tokenized or empty corpus
    (DataError, one line each).
    """
    check_output_folder(args.out, args.force, args.corpus)
    files = list_corpus(args.corpus)  # the files `tritterctl start --corpus` reads, sniffed the same way
    if files[0].kind == "tokens":
        raise DataError(f"--corpus {args.corpus} is pre-tokenized (.bin/.npy); a tokenizer trains on text")
    check_corpus_size(files, str(args.corpus), args.text_field)  # an empty corpus, when a bounded read can tell
    reader = CorpusReader(files, args.text_field)
    started = time.monotonic()
    pieces = _limited((text for text, _ in reader), args.max_chars)
    tok = train_bpe(pieces, args.vocab_size, args.min_frequency, show_progress=sys.stderr.isatty())
    if not reader.documents:  # a corpus too big for the bounded check, read whole: no text after all
        raise DataError(f"corpus is empty (no text): {args.corpus}")
    spec = write_tokenizer_folder(tok, args.out)
    ids = spec.ids
    note = f"; {reader.replaced} invalid characters replaced, the first at {reader.replaced_at}" if reader.replaced else ""
    print(f"wrote {args.out}: {ids:,} ids (model vocabulary {model_vocab_size(ids):,}), trained on "
          f"{reader.bytes_done / 1e6:.1f} MB in {time.monotonic() - started:.0f} s{note}; "
          f"use: tritterctl start --tokenizer {args.out.resolve()}")
    return 0


def _limited(texts, limit: int):  # type: ignore[no-untyped-def]
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if limit and seen >= limit:
            return


def prepare_line(p: object) -> str:
    """One line for a PrepareEvent (live or folded into RunState.prepare), e.g. ``tokenizing 34% · 12.1 MB/s · ETA 3m10s``
    or ``ready · 1,234,567 tokens · corpus 3f2a…  tokenizer 9c1e…``."""
    stage = getattr(p, "stage", "")
    done, total = getattr(p, "bytes_done", 0), getattr(p, "bytes_total", 0)
    parts = [stage]
    if stage in ("hashing", "checking", "tokenizing"):
        pct = f"{100 * done / total:.0f}%" if total else f"{done / 1e6:.0f} MB"
        parts = [f"{stage} {pct}"]
        rate = getattr(p, "mb_per_s", 0.0)
        if rate:
            parts.append(f"{rate:.1f} MB/s")
        eta = getattr(p, "eta_s", None)
        if eta is not None:
            parts.append(f"ETA {fmt_duration(eta)}")
    tokens = getattr(p, "tokens", 0)
    if tokens:
        parts.append(f"{tokens:,} tokens")
    if stage == "ready":
        if getattr(p, "vocab_size", 0):
            parts.append(f"vocab {p.vocab_size:,}")  # type: ignore[attr-defined]
        if getattr(p, "corpus_digest", ""):
            parts.append(f"corpus {p.corpus_digest[:12]}  tokenizer {p.tokenizer_digest[:12]}")  # type: ignore[attr-defined]
    replaced = getattr(p, "replaced", 0)
    if replaced:
        parts.append(f"{replaced:,} invalid characters replaced (first: {getattr(p, 'replaced_at', '')})")
    return " · ".join(parts)
