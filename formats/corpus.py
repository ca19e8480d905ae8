"""Corpus readers: what ``--corpus PATH`` may point at, sniffed cheaply and read lazily.

Shared by the daemon (tokenizing into shards) and ``tritterctl tokenizer train`` (runs on the
client's machine), so it depends on nothing of ours but this package; numpy, zstandard and
(for Parquet) pyarrow are imported where needed.

Accepted inputs (docs/data.md):

- a text file (UTF-8, UTF-8 with BOM, UTF-16 with BOM): one document; gzip- or
  zstd-compressed text (``.txt.gz``, ``.md.zst``, ...; recognised by the content's magic
  bytes) is read like its uncompressed form;
- ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst``: one JSON object per line, the document in a
  string field (``--text-field``, default ``text``);
- ``.parquet``: the same column, read one row group at a time (pyarrow);
- pre-tokenized ``.bin`` (flat little-endian uint16, nanoGPT) or 1-D integer ``.npy``;
- a folder: every file above, recursively, in sorted path order (hidden entries skipped;
  extensionless files count when they sniff as text, ``.txt``/``.md``/extensionless names
  with ``.gz``/``.zst`` too; other extensions are ignored).
  Text and pre-tokenized files cannot be mixed.

Documents are yielded as *pieces* of at most ``2 * chunk_chars`` characters, cut after a
newline between two non-space characters, else before a single space between two non-space
characters (for byte-level BPE with the GPT-2 pre-tokenizer both are pre-token boundaries, so
the ids equal those of the whole document), else hard at ``chunk_chars`` (a run of more than
``chunk_chars`` characters without whitespace: the only case whose ids can differ).

Errors: ``DataError`` (a ``ValueError``) with one line that starts with the file and, where
there is one, ``line N:`` / ``row N:``.  Invalid UTF-8 and lone surrogates are replaced by
U+FFFD and counted (``CorpusReader.replaced``), not fatal: one bad byte in a terabyte of web
text should not end a run.  Structural errors in JSONL (not JSON, not an object, the field
missing or not a string) end the read: they mean the wrong file or the wrong field.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tritter.formats.pathkind import open_regular, special_path_problem
from tritter.protocol.oserrors import error_reason, os_error_reason

SNIFF_BYTES = 1 << 16  # the start-time sniff reads at most this much of a file
FOLDER_SNIFF_BYTES = 1 << 12  # ... and this much of each file in a folder (folders may hold 100k files)
CHUNK_CHARS = 1 << 16  # default piece size; a piece is between 1x and 2x of it
MIN_TOKENS = 20  # a token stream shorter than this cannot train (daemon/engine/data.py refuses it)
# The start-time probe (``probe_documents``): bounded, so a 300 GB corpus costs what a small one does.
PROBE_BYTES = 1 << 18  # content bytes read at most (256 KB: well inside the start check's 4 s, even for tiny JSONL records)
PROBE_FILES = 256  # files opened at most
PROBE_CHARS = 1 << 16  # a corpus with at most this much text is kept whole (tokenized at start)
TEXT_SUFFIXES = frozenset({".txt", ".md", ""})
TOKEN_SUFFIXES = frozenset({".bin", ".npy"})
JSONL_SUFFIXES = {".jsonl": None, ".jsonl.gz": "gz", ".jsonl.zst": "zst"}
COMPRESSION_SUFFIXES = {".gz": "gz", ".zst": "zst"}  # on text names: a.txt.gz, a.md.zst, a.gz
# Compressed streams read as they are, by their magic bytes (RFC 1952; RFC 8878).  Neither can
# begin UTF-8 text (0x8b and 0xb5 are continuation bytes with no lead byte), so no text file is
# taken for one.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"\x28\xb5\x2f\xfd": "zst"}
COMPRESSION_NAMES = {"gz": "gzip", "zst": "zstd"}
# Formats named in the message when a file is not text (instead of "looks binary").
_UNREAD_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x04\x22\x4d\x18", "an LZ4-compressed file"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)

_NL_CUT = re.compile(r"\S\n(?=\S)")  # cut after the newline
_SPACE_CUT = re.compile(r"\S(?= \S)")  # cut after the non-space, before the space
_SURROGATE = re.compile("[\ud800-\udfff]")
_NPY_MAGIC = b"\x93NUMPY"
_PARQUET_MAGIC = b"PAR1"


class DataError(ValueError):
    """Bad corpus or tokenizer input.  ``str(error)`` is one line meant for the user as is."""


@dataclass(frozen=True)
class CorpusFile:
    """One input file: ``kind`` is ``text``, ``jsonl``, ``parquet`` or ``tokens``;
    ``compression`` is ``gz``/``zst`` for compressed JSONL or text; ``name`` is the path relative to
    the corpus root (the file name for a single-file corpus), used in digests and messages."""

    path: Path
    kind: str
    name: str
    compression: str | None = None


# --------------------------------------------------------------------------- sniffing


def _suffix(path: Path) -> str:
    """Lower-case suffix, with ``.jsonl.gz``/``.jsonl.zst`` kept whole."""
    name = path.name.lower()
    for multi in (".jsonl.gz", ".jsonl.zst"):
        if name.endswith(multi):
            return multi
    return path.suffix.lower()


def _read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    try:
        with open_regular(path) as f:  # never blocks on a FIFO or device (formats/pathkind.py)
            return f.read(n)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {os_error_reason(e)}") from None


def _bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark announces (``utf-8-sig``, ``utf-16``), or None."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def text_problem(head: bytes, complete: bool) -> str | None:
    """Why ``head`` (the first bytes of a file; ``complete`` when that is all of it) is not
    text we read, or None.  UTF-8 (a sequence cut by the sniff window is fine) and UTF-16 with
    a BOM are text; NUL bytes mean binary."""
    encoding = _bom_encoding(head)
    if encoding == "utf-16":
        return None
    if b"\x00" in head:
        return "looks binary (contains NUL bytes), not text"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (bad byte at offset {e.start}; UTF-16 needs a byte-order mark)"
    return None


def _compression_suffix(path: Path) -> tuple[str, str | None]:
    """(the suffix under a ``.gz``/``.zst`` one, its compression), e.g. ``(".txt", "gz")`` for
    ``a.txt.gz``, ``("", "zst")`` for ``a.zst``; ``(suffix, None)`` for other names."""
    compression = COMPRESSION_SUFFIXES.get(path.suffix.lower())
    if compression is None:
        return path.suffix.lower(), None
    return Path(path.stem).suffix.lower(), compression


def _unread_format(head: bytes) -> str | None:
    """What a file that is not text is, when its first bytes say so (bzip2, xz, zip, ...), or None."""
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":  # bzip2 stream + block magic
        return "a bzip2-compressed file"
    return next((what for magic, what in _UNREAD_FORMATS if head.startswith(magic)), None)


def _read_decompressed_head(cf: CorpusFile, n: int) -> bytes:
    """The first ``n`` bytes of a compressed file's content.  Raises DataError (one line) for a
    damaged or truncated stream."""
    try:
        with _open_binary(cf) as f:
            return f.read(n)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut stream is EOFError
        raise DataError(f"{cf.path}: cannot read the {COMPRESSION_NAMES[cf.compression or '']} stream: {e}") from None
    except Exception as e:
        if type(e).__module__.split(".")[0] not in ("zstd", "zstandard"):
            raise
        raise DataError(f"{cf.path}: cannot read the zstd stream: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def sniff(path: Path, explicit: bool = True, nbytes: int = SNIFF_BYTES) -> CorpusFile | None:
    """Classify one file by its name and first ``nbytes`` (64 KB; 4 KB per file in a folder).

    ``explicit``: the user named this file (``--corpus FILE``): unknown extensions are read as
    text if they sniff as text, and anything unreadable raises.  In a folder (``explicit``
    False) files with other extensions, and extensionless files that are not text, return None.
    gzip/zstd-compressed text (by magic bytes) is sniffed on its decompressed first bytes.
    Raises DataError (one line) for an explicit file that is not a corpus.
    """
    suffix = _suffix(path)
    name = path.name
    if suffix in JSONL_SUFFIXES:
        return CorpusFile(path, "jsonl", name, JSONL_SUFFIXES[suffix])
    if suffix == ".parquet":
        head = _read_head(path, 4)
        if head != _PARQUET_MAGIC:
            raise DataError(f"{path}: not a Parquet file (no PAR1 magic)")
        return CorpusFile(path, "parquet", name)
    if suffix in TOKEN_SUFFIXES:
        if suffix == ".npy" and _read_head(path, 6) != _NPY_MAGIC:
            raise DataError(f"{path}: not a NumPy .npy file")
        return CorpusFile(path, "tokens", name)
    inner, named_compression = _compression_suffix(path)
    if named_compression is not None and inner in TOKEN_SUFFIXES | {".parquet"}:
        if not explicit:
            return None  # as any other extension in a folder
        raise DataError(f"{path}: a {COMPRESSION_NAMES[named_compression]}-compressed {inner} file; decompress it first "
                        "(only text and JSONL are read compressed)")
    if not explicit and inner not in TEXT_SUFFIXES:
        return None
    head = _read_head(path, nbytes)
    compression = next((c for magic, c in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)
    if compression is not None:  # the content decides, whatever the name says
        try:
            head = _read_decompressed_head(CorpusFile(path, "text", name, compression), nbytes)
        except DataError:
            if explicit or inner != "":
                raise
            return None  # a damaged archive among a folder's extensionless files is not a document
    problem = text_problem(head, complete=len(head) < nbytes)
    if problem is None and explicit and len(head) < nbytes and not head.strip(b" \t\r\n\x0b\x0c"):
        raise DataError(f"corpus is empty (no text): {path}")
    if problem is None:
        return CorpusFile(path, "text", name, compression)
    if compression is not None:
        problem = f"a {COMPRESSION_NAMES[compression]}-compressed file whose content {problem}"
    elif (what := _unread_format(head)) is not None:
        problem = f"{what}, which tritter does not read; decompress it (gzip .gz and zstd .zst files are read as they are)"
    if explicit:
        raise DataError(f"{path}: {problem}")
    if suffix == "":
        return None  # stray executables and the like in a folder are not documents
    raise DataError(f"{path}: {problem}")


def list_corpus(root: Path) -> list[CorpusFile]:
    """The files of ``--corpus root`` in reading order (sorted by path parts), each sniffed.

    Raises DataError: missing/unreadable path, nothing usable in a folder, text mixed with
    pre-tokenized files, an explicit file that is not a corpus.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"corpus not found: {root}")
    if problem := special_path_problem(root):  # a FIFO/socket/device: refuse before any open
        raise DataError(problem)
    if not root.is_dir():
        if not os.access(root, os.R_OK):
            raise DataError(f"{root}: cannot read: permission denied")
        return [sniff(root, explicit=True)]  # type: ignore[list-item]
    files: list[CorpusFile] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname.startswith("."):
                continue
            p = Path(dirpath) / fname
            if not p.is_file():  # FIFOs, sockets, devices, broken links: skipped unopened (docs/data.md)
                continue
            cf = sniff(p, explicit=False, nbytes=FOLDER_SNIFF_BYTES)
            if cf is not None:
                rel = p.relative_to(root)
                files.append(CorpusFile(cf.path, cf.kind, rel.as_posix(), cf.compression))
    files.sort(key=lambda f: Path(f.name).parts)
    if not files:
        raise DataError(
            f"corpus folder has no usable files (.txt, .md, extensionless text, each also .gz/.zst, .jsonl[.gz|.zst], "
            f".parquet, .bin, .npy): {root}"
        )
    kinds = {f.kind == "tokens" for f in files}
    if len(kinds) > 1:
        raise DataError(f"corpus folder mixes pre-tokenized (.bin/.npy) and text files; use one kind: {root}")
    return files


def _walk_error(error: OSError) -> None:
    raise DataError(f"{error.filename}: cannot read: {os_error_reason(error)}")


# --------------------------------------------------------------------------- cheap checks


def check_field(cf: CorpusFile, text_field: str) -> None:
    """Check that a JSONL file's first records / a Parquet file's schema have ``text_field``
    as a string (reads at most 64 KB of a JSONL file).  Raises DataError."""
    if cf.kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(cf.path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{cf.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        if text_field not in schema.names:
            cols = ", ".join(schema.names[:10])
            raise DataError(f'{cf.path}: no column "{text_field}" (columns: {cols}); choose one with --text-field')
        typ = schema.field(text_field).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise DataError(f'{cf.path}: column "{text_field}" holds {typ}, not strings')
    elif cf.kind == "jsonl":
        with _open_binary(cf) as stream:
            head = stream.read(SNIFF_BYTES)
        lines = head.split(b"\n")
        if len(head) == SNIFF_BYTES and len(lines) > 1:
            lines = lines[:-1]  # the last line may be cut by the window
        for lineno, raw in enumerate(lines, start=1):
            if raw.strip():
                _json_text(raw, text_field, cf.path, lineno, strict_decode=False)
                return  # the first record decides; later ones are checked while tokenizing


# --------------------------------------------------------------------------- pieces


def cut_point(text: str, chunk_chars: int) -> int:
    """Where to cut ``text`` (longer than ``2 * chunk_chars``): a safe boundary in
    ``[chunk_chars, 2 * chunk_chars]``, else ``chunk_chars``.  See the module docstring."""
    end = 2 * chunk_chars
    m = _NL_CUT.search(text, chunk_chars, end + 1)
    if m is not None:
        return m.end()
    m = _SPACE_CUT.search(text, chunk_chars, end + 1)
    if m is not None:
        return m.end()
    return chunk_chars


def split_text(text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """``text`` as consecutive pieces of at most ``2 * chunk_chars`` characters (joined they
    are ``text``)."""
    start = 0
    while len(text) - start > 2 * chunk_chars:
        cut = cut_point(text[start : start + 2 * chunk_chars + 2], chunk_chars)
        yield text[start : start + cut]
        start += cut
    if start < len(text) or not text:
        yield text[start:]


def _stream_pieces(read, chunk_chars: int) -> Iterator[str]:
    """Pieces of a character stream (``read(n)`` returns up to n characters, "" at the end);
    memory is bounded by ``3 * chunk_chars`` characters whatever the line lengths."""
    buf = ""
    eof = False
    while True:
        while not eof and len(buf) < 2 * chunk_chars + 2:
            s = read(chunk_chars)
            if s:
                buf += s
            else:
                eof = True
        if eof and len(buf) <= 2 * chunk_chars:
            if buf:
                yield buf
            return
        cut = cut_point(buf, chunk_chars)
        yield buf[:cut]
        buf = buf[cut:]


class _Replaced:
    """Counts bytes/characters replaced by U+FFFD (a codec error handler cannot carry state)."""

    count = 0


def _count_replace(error: UnicodeError) -> tuple[str, int]:
    _Replaced.count += 1
    return "\ufffd", error.end  # type: ignore[attr-defined]


codecs.register_error("tritter-replace", _count_replace)


class _Counting(io.RawIOBase):
    """A raw file that counts the bytes read from disk (progress for compressed input too)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.bytes_read = 0

    def readable(self) -> bool:
        """Always True: this raw file is read-only and readable."""
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        """Read up to ``len(b)`` bytes from the file into ``b``, add them to ``bytes_read``; returns bytes read (0
        at EOF)."""
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        self.bytes_read += n or 0
        return n or 0

    def close(self) -> None:
        """Close the underlying file, then this wrapper."""
        self._f.close()
        super().close()


class ReadLimitReached(Exception):
    """A ``CorpusReader`` with a ``read_limit`` read that many bytes without finishing."""


class _Budget:
    """Bytes a bounded read may still take (decompressed bytes, Parquet batch bytes)."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, n: int) -> None:
        """Take ``n`` bytes; raises ReadLimitReached once the budget is overdrawn."""
        self.left -= n
        if self.left < 0:
            raise ReadLimitReached


class _Metered(io.RawIOBase):
    """A read-only stream that charges what it reads to a ``_Budget``."""

    def __init__(self, f: IO[bytes], budget: _Budget) -> None:
        self._f = f
        self._budget = budget

    def readable(self) -> bool:
        """Always True: this stream is read-only and readable."""
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        """Read up to ``len(b)`` bytes into ``b`` and charge them; returns bytes read (0 at EOF).
        Raises ReadLimitReached when the budget is spent."""
        n = self._f.readinto(b) or 0  # type: ignore[attr-defined]
        self._budget.spend(n)
        return n

    def close(self) -> None:
        """Close the underlying stream, then this wrapper."""
        self._f.close()
        super().close()


def _open_binary(cf: CorpusFile, counter: list[_Counting] | None = None, budget: _Budget | None = None) -> IO[bytes]:
    raw = _Counting(open_regular(cf.path, buffering=0))
    if counter is not None:
        counter.append(raw)
    f: IO[bytes] = io.BufferedReader(raw, 1 << 20)
    if cf.compression == "gz":
        f = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
    elif cf.compression == "zst":
        import zstandard

        f = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True), 1 << 20)  # type: ignore[arg-type]
    if budget is not None:  # charge the content (decompressed) bytes: what reading costs
        f = io.BufferedReader(_Metered(f, budget), 1 << 16)  # type: ignore[arg-type]
    return f


def _json_text(raw: bytes, field: str, path: Path, lineno: int, strict_decode: bool = True) -> str | None:
    """The string ``field`` of one JSONL line (None for null).  Raises DataError."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line = raw.decode("utf-8", "tritter-replace")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {lineno}: not a JSON object")
    if field not in record:
        keys = ", ".join(list(record)[:8])
        raise DataError(f'{path}: line {lineno}: no "{field}" field (fields: {keys}); choose one with --text-field')
    text = record[field]
    if text is None:
        return None
    if not isinstance(text, str):
        raise DataError(f'{path}: line {lineno}: "{field}" is {type(text).__name__.replace("dict", "an object").replace("list", "an array")}, not a string')
    if _SURROGATE.search(text):  # "\ud83d" alone: tokenizers cannot take it
        n = len(_SURROGATE.findall(text))
        _Replaced.count += n
        text = _SURROGATE.sub("\ufffd", text)
    return text


class CorpusReader:
    """Streams a corpus as pieces: ``for text, doc_start in reader`` (``doc_start``: the piece
    begins a new document).  Progress: ``bytes_done`` (bytes of the input files read so far),
    ``bytes_total``, ``documents``; ``replaced`` counts U+FFFD substitutions and
    ``replaced_at`` names where the first one happened ("FILE: line N").
    ``read_limit``: read at most about this many content bytes (decompressed; Parquet: Arrow
    batch bytes), then raise ReadLimitReached (the start-time probe, ``probe_documents``).
    """

    def __init__(self, files: list[CorpusFile], text_field: str = "text", chunk_chars: int = CHUNK_CHARS,
                 read_limit: int | None = None) -> None:
        self.files = files
        self.text_field = text_field
        self.chunk_chars = chunk_chars
        self._budget = _Budget(read_limit) if read_limit is not None else None
        self.bytes_total = sum(_size(f.path) for f in files)
        self.bytes_done = 0
        self.documents = 0
        self.replaced = 0
        self.replaced_at = ""

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        finished = 0
        for cf in self.files:
            counter: list[_Counting] = []
            readers = {"text": self._text, "jsonl": self._jsonl, "parquet": self._parquet}
            if cf.kind not in readers:
                raise DataError(f"{cf.path}: pre-tokenized files are not read as documents")
            try:
                for piece, start, where in readers[cf.kind](cf, counter):
                    if _Replaced.count:
                        self._note_replaced(where)
                    if start:
                        self.documents += 1
                    self.bytes_done = finished + (counter[0].bytes_read if counter else 0)
                    yield piece, start
            except (DataError, ReadLimitReached):
                raise
            except (OSError, EOFError) as e:  # also a truncated or corrupt .gz
                raise DataError(f"{cf.path}: cannot read: {error_reason(e)}") from None
            except Exception as e:
                if type(e).__module__.split(".")[0] not in ("zstd", "zstandard", "pyarrow"):
                    raise
                raise DataError(f"{cf.path}: cannot read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            finished += _size(cf.path)
            self.bytes_done = finished

    def _note_replaced(self, where: str) -> None:
        if not self.replaced:
            self.replaced_at = where
        self.replaced += _Replaced.count
        _Replaced.count = 0

    def _text(self, cf: CorpusFile, counter: list[_Counting]) -> Iterator[tuple[str, bool, str]]:
        with _open_binary(cf, counter, self._budget) as f:
            encoding = _bom_encoding(f.peek(4)[:4]) or "utf-8"  # type: ignore[attr-defined]
            # newline=None: universal newlines (\r\n and \r become \n), also across read() calls.
            text = io.TextIOWrapper(f, encoding=encoding, errors="tritter-replace", newline=None)
            first, line = True, 1
            for piece in _stream_pieces(text.read, self.chunk_chars):
                if first and not piece.strip() and len(piece) < self.chunk_chars:
                    return  # a blank file is no document
                at = line
                if _Replaced.count:  # name the line of the first replacement character
                    at += piece.count("\n", 0, max(piece.find("\ufffd"), 0))
                yield piece, first, f"{cf.path}: line {at}"
                line += piece.count("\n")
                first = False

    def _jsonl(self, cf: CorpusFile, counter: list[_Counting]) -> Iterator[tuple[str, bool, str]]:
        with _open_binary(cf, counter, self._budget) as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                text = _json_text(raw, self.text_field, cf.path, lineno)
                if text is None or not text.strip():
                    continue
                text = text.replace("\r\n", "\n")
                where = f"{cf.path}: line {lineno}"
                for i, piece in enumerate(split_text(text, self.chunk_chars)):
                    yield piece, i == 0, where

    def _parquet(self, cf: CorpusFile, counter: list[_Counting]) -> Iterator[tuple[str, bool, str]]:
        import pyarrow.parquet as pq

        check_field(cf, self.text_field)
        pf = pq.ParquetFile(cf.path)
        size = _size(cf.path)
        row = 0
        for group in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=1024, row_groups=[group], columns=[self.text_field]):
                if self._budget is not None:
                    self._budget.spend(batch.nbytes)
                for text in batch.column(0).to_pylist():
                    row += 1
                    if text is None or not text.strip():
                        continue
                    text = text.replace("\r\n", "\n")
                    for i, piece in enumerate(split_text(text, self.chunk_chars)):
                        yield piece, i == 0, f"{cf.path}: row {row}"
            # progress by row group: the fraction of the file's groups read
            counter[:] = [_Fixed(size * (group + 1) // max(pf.num_row_groups, 1))]


class _Fixed:
    """A stand-in counter for readers that know their progress otherwise (Parquet row groups)."""

    def __init__(self, n: int) -> None:
        self.bytes_read = n


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read: {os_error_reason(e)}") from None


def iter_documents(files: list[CorpusFile], text_field: str = "text", chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Whole documents (pieces joined), for callers that want documents, e.g. tests and the
    tokenizer trainer on small corpora.  Holds one document in memory at a time."""
    doc: list[str] = []
    for piece, start in CorpusReader(files, text_field, chunk_chars):
        if start and doc:
            yield "".join(doc)
            doc = []
        doc.append(piece)
    if doc:
        yield "".join(doc)


@dataclass(frozen=True)
class CorpusProbe:
    """What a bounded read of a corpus found (``probe_documents``).

    ``found``: at least one document.  ``complete``: the whole corpus was read within the bounds,
    so ``found`` False means it has no text at all.  ``pieces``: when complete and at most
    ``PROBE_CHARS`` characters, every ``(piece, doc_start)`` the reader yields (as tokenizing
    would see them), else empty.
    """

    found: bool
    complete: bool
    pieces: tuple[tuple[str, bool], ...] = ()


def probe_documents(files: list[CorpusFile], text_field: str = "text", read_limit: int = PROBE_BYTES,
                    max_files: int = PROBE_FILES, keep_chars: int = PROBE_CHARS) -> CorpusProbe:
    """Read the start of a text corpus (not pre-tokenized files) with the real reader, bounded:
    at most ``read_limit`` content bytes (decompressed) from at most ``max_files`` files, and it
    stops after ``keep_chars`` characters of documents.  Cheap for any corpus size; it tells an
    empty corpus (blank files, JSONL whose texts are all empty or null, a Parquet file without
    rows) from one with text whenever the corpus is that small.

    Returns a CorpusProbe.  Raises DataError for what the reader refuses in what it read (a
    JSONL line that is not JSON, an unreadable file).
    """
    saved = _Replaced.count  # the probe's substitutions are not the real reader's to report
    pieces: list[tuple[str, bool]] = []
    chars = 0
    try:
        for piece, start in CorpusReader(files[:max_files], text_field, read_limit=read_limit):
            chars += len(piece)
            if chars > keep_chars:
                return CorpusProbe(found=True, complete=False)
            pieces.append((piece, start))
    except ReadLimitReached:
        return CorpusProbe(found=bool(pieces), complete=False)
    finally:
        _Replaced.count = saved
    complete = len(files) <= max_files
    return CorpusProbe(found=bool(pieces), complete=complete, pieces=tuple(pieces) if complete else ())


# --------------------------------------------------------------------------- identity


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def corpus_digest(files: list[CorpusFile], memo_path: Path | None = None, progress=None) -> str:
    """A 32-hex digest of the corpus *content*: every file's kind, relative name and xxh3-128
    of its bytes, in reading order.  Renaming or reordering files changes it (documents move).

    ``memo_path``: a JSON file remembering each file's digest under its (size, mtime, ctime,
    inode); a file whose stat is unchanged is not read again (ctime cannot be set back, so any
    rewrite or replacement is hashed anew).  ``progress(bytes_done, bytes_total)`` is called
    about every 64 MB of hashing.  Raises DataError for an unreadable file.
    """
    import xxhash

    memo: dict[str, list] = {}
    if memo_path is not None:
        try:
            memo = json.loads(Path(memo_path).read_text())
        except (OSError, ValueError):
            memo = {}
    total = sum(_size(f.path) for f in files)
    done = 0
    changed = False
    h = xxhash.xxh3_128(b"tritter-corpus-v1\0")
    for cf in files:
        key = str(cf.path.resolve())
        try:
            stat = _stat_key(cf.path)
            entry = memo.get(key)
            if isinstance(entry, list) and entry[:4] == stat:
                digest = entry[4]
            else:
                fh = xxhash.xxh3_128()
                with open_regular(cf.path) as f:
                    since = 0
                    for block in iter(lambda: f.read(1 << 22), b""):
                        fh.update(block)
                        since += len(block)
                        if progress is not None and since >= 1 << 26:
                            progress(done + f.tell(), total)
                            since = 0
                digest = fh.hexdigest()
                memo[key] = [*stat, digest]
                changed = True
        except OSError as e:
            raise DataError(f"{cf.path}: cannot read: {os_error_reason(e)}") from None
        done += stat[0]
        h.update(f"{cf.kind}\0{cf.name}\0{digest}\n".encode())
    if changed and memo_path is not None:
        from tritter.formats.files import atomic_write

        atomic_write(Path(memo_path), json.dumps(memo).encode(), durable=False)
    return h.hexdigest()
