"""Token shards: a tokenized corpus on disk, read through memory maps.

A shard folder ``CACHE/tokens-<key>/`` holds::

    shard-000000.bin   exactly ``shard_tokens`` little-endian uint16 (or uint32) ids
    shard-000001.bin   ... the last shard may be shorter
    index.json         {"version", "key", "dtype", "shard_tokens", "complete", "shards": [...], ...}
    lock               flock'ed by the one process building the folder

The stream is the shards concatenated.  Each shard is written under a temporary name,
fsynced and renamed; then ``index.json`` is rewritten atomically with one entry per finished
shard: its size, xxh3-128 digest, file stat, and the *cursor* where the next shard starts
(``next_unit``: the ordinal of the reader's piece, ``next_skip``: tokens of that piece's output
already in this shard).  A ``kill -9`` loses only the unfinished shard: a restarted build keeps
the finished ones and continues at the cursor of the last (``ShardWriter``).  ``complete:
true`` marks a finished stream.  A shard whose stat changed since it was written is checked
against its digest; from the first bad shard on, the stream is rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

from tritter.formats.files import atomic_write, fsync_dir

SHARD_VERSION = 1
INDEX = "index.json"
DEFAULT_SHARD_TOKENS = 1 << 24  # 16 Mi tokens: 32 MB of uint16, a few seconds of work per shard


def token_dtype(ids: int) -> np.dtype:
    """uint16 when every id (``0 .. ids-1``) fits, else uint32; little-endian."""
    return np.dtype("<u2") if ids <= 1 << 16 else np.dtype("<u4")


def shard_name(index: int) -> str:
    """File name of shard ``index`` (0-based) in a shard folder: ``shard-NNNNNN.bin`` (6 digits, zero-padded)."""
    return f"shard-{index:06d}.bin"


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _file_xxh3(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_index(directory: Path) -> dict | None:
    """``index.json`` of a shard folder, or None when absent or unreadable."""
    try:
        index = json.loads((Path(directory) / INDEX).read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("version") == SHARD_VERSION else None


def valid_prefix(directory: Path, index: dict) -> int:
    """How many leading shards of ``index`` are intact on disk (size right; digest right when
    the file's stat changed since it was written)."""
    itemsize = np.dtype(index["dtype"]).itemsize
    for i, entry in enumerate(index["shards"]):
        path = Path(directory) / entry["file"]
        try:
            stat = _stat(path)
        except OSError:
            return i
        if stat[0] != entry["tokens"] * itemsize:
            return i
        if stat != entry["stat"] and _file_xxh3(path) != entry["xxh3"]:
            return i
    return len(index["shards"])


class ShardLock:
    """An exclusive flock on ``directory/lock`` (blocking): one builder per shard folder, the
    others wait and then find the folder complete.  Released on close or process death."""

    def __init__(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._fd = os.open(Path(directory) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        """Release the flock (close its descriptor); calling it again does nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShardLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardWriter:
    """Appends token ids to fixed-size shards in ``directory`` (held under a ShardLock by the
    caller).  ``meta`` (JSON values: the cache key and what produced it) goes into the index;
    an existing index with the same key, dtype and shard size is resumed: ``resume_unit`` /
    ``resume_skip`` say where the caller's reader must continue.
    """

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, meta: dict) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.meta = meta
        self.entries: list[dict] = []
        old = read_index(self.directory)
        if (
            old is not None
            and old.get("key") == meta.get("key")
            and old.get("dtype") == self.dtype.str
            and old.get("shard_tokens") == shard_tokens
        ):
            self.entries = old["shards"][: valid_prefix(self.directory, old)]
            if old.get("complete") and len(self.entries) == len(old["shards"]):
                self.entries = self.entries[:-1]  # reopened for writing: redo the (short) last shard
        for p in self.directory.glob(".shard-*.tmp"):  # an unfinished shard of a killed build
            p.unlink(missing_ok=True)
        for p in self.directory.glob("shard-*.bin"):
            if p.name not in {e["file"] for e in self.entries}:
                p.unlink(missing_ok=True)
        last = self.entries[-1] if self.entries else None
        self.resume_unit = int(last["next_unit"]) if last else 0
        self.resume_skip = int(last["next_skip"]) if last else 0
        self.tokens_before = sum(int(e["tokens"]) for e in self.entries)
        self._file = None
        self._hash = xxhash.xxh3_128()
        self._filled = 0

    @property
    def tokens(self) -> int:
        """Tokens in finished shards plus the open one."""
        return self.tokens_before + self._filled

    def _open(self) -> None:
        name = shard_name(len(self.entries))
        self._tmp = self.directory / f".{name}.tmp"
        self._file = open(self._tmp, "wb")
        self._hash = xxhash.xxh3_128()
        self._filled = 0

    def add(self, unit: int, ids: np.ndarray, offset: int, progress: dict) -> None:
        """Append ``ids`` (already ``self.dtype``): tokens ``offset ..`` of the output of reader
        piece ``unit``.  ``progress`` (bytes_done, documents, ...) is stored with a shard that
        fills up here."""
        pos = 0
        while pos < len(ids):
            if self._file is None:
                self._open()
            take = min(len(ids) - pos, self.shard_tokens - self._filled)
            block = ids[pos : pos + take]
            data = block.tobytes()
            self._file.write(data)  # type: ignore[union-attr]
            self._hash.update(data)
            self._filled += take
            pos += take
            if self._filled == self.shard_tokens:
                self._close_shard(unit, offset + pos, progress)

    def _close_shard(self, next_unit: int, next_skip: int, progress: dict) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        name = shard_name(len(self.entries))
        final = self.directory / name
        os.replace(self._tmp, final)
        fsync_dir(self.directory)
        self.entries.append(
            {"file": name, "tokens": self._filled, "xxh3": self._hash.hexdigest(), "stat": _stat(final),
             "next_unit": next_unit, "next_skip": next_skip, **progress}
        )
        self.tokens_before += self._filled
        self._filled = 0
        self._write_index(complete=False, totals={})

    def _write_index(self, complete: bool, totals: dict) -> None:
        index = {"version": SHARD_VERSION, **self.meta, "dtype": self.dtype.str, "shard_tokens": self.shard_tokens,
                 "complete": complete, "tokens": self.tokens_before, **totals, "shards": self.entries}
        atomic_write(self.directory / INDEX, json.dumps(index, indent=1).encode())

    def finish(self, next_unit: int, progress: dict, totals: dict) -> dict:
        """Close the last (possibly short) shard and mark the index complete; return the index."""
        if self._file is not None and self._filled:
            self._close_shard(next_unit, 0, progress)
        elif self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)
        self._write_index(complete=True, totals=totals)
        return read_index(self.directory)  # type: ignore[return-value]

    def abort(self) -> None:
        """Drop the unfinished shard (the finished ones stay for the next attempt)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)


def stream_digest(index: dict) -> str:
    """A 32-hex digest of the whole token stream, from the shard digests (no file read)."""
    h = xxhash.xxh3_128(index["dtype"].encode())
    for entry in index["shards"]:
        h.update(f"{entry['tokens']}:{entry['xxh3']};".encode())
    return h.hexdigest()


def open_shards(directory: Path) -> tuple[TokenStream, dict] | None:
    """The complete, intact stream of a shard folder as memmaps, with its index; None when the
    folder is missing, unfinished or damaged (then build it again)."""
    index = read_index(directory)
    if index is None or not index.get("complete"):
        return None
    if valid_prefix(directory, index) != len(index["shards"]):
        return None
    dtype = np.dtype(index["dtype"])
    arrays = [np.memmap(Path(directory) / e["file"], dtype=dtype, mode="r") for e in index["shards"] if e["tokens"]]
    return TokenStream(arrays), index


class TokenStream:
    """A 1-D token stream made of several arrays (shards, memmaps or in-memory), indexed as one.

    ``len()``, ``stream[a:b]`` (a view, step 1), ``stream[int]``, ``stream[int_array]`` (any
    shape), ``windows(starts, length)`` (the fast path of the batch sampler) and
    ``np.asarray(stream)`` (copies everything: small streams only).
    """

    ndim = 1

    def __init__(self, arrays: Sequence[np.ndarray], start: int = 0, stop: int | None = None) -> None:
        self._arrays = [a for a in arrays if len(a)]
        lengths = np.array([len(a) for a in self._arrays], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self._starts[-1])
        self._start = start
        self._stop = total if stop is None else stop
        if not 0 <= self._start <= self._stop <= total:
            raise ValueError(f"bad view [{start}, {stop}) of a {total}-token stream")

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the token ids (``<u2`` or ``<u4``, see ``token_dtype``); ``<u2`` for an empty stream."""
        return self._arrays[0].dtype if self._arrays else np.dtype("<u2")

    def __len__(self) -> int:
        return self._stop - self._start

    def _view(self, start: int, stop: int) -> TokenStream:
        view = TokenStream.__new__(TokenStream)
        view._arrays, view._starts = self._arrays, self._starts
        view._start, view._stop = self._start + start, self._start + stop
        return view

    def _range(self, a: int, b: int) -> np.ndarray:
        """Global positions [a, b) as one array (a copy only when it spans shards)."""
        first = int(np.searchsorted(self._starts, a, side="right")) - 1
        parts = []
        while a < b:
            lo = int(self._starts[first])
            arr = self._arrays[first]
            take = min(b, lo + len(arr))
            parts.append(arr[a - lo : take - lo])
            a = take
            first += 1
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("TokenStream slices must have step 1")
            return self._view(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            return self._range(self._start + i, self._start + i + 1)[0]
        idx = np.asarray(key, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} tokens")
        flat = idx.ravel() + self._start
        out = np.empty(flat.shape, dtype=self.dtype)
        which = np.searchsorted(self._starts, flat, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            out[sel] = self._arrays[s][flat[sel] - self._starts[s]]
        return out.reshape(idx.shape)

    def windows(self, starts: np.ndarray, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """``len(starts) x length`` array (``out``, else a new int64 one): row i is tokens
        ``starts[i] .. starts[i]+length``.  Rows inside one shard are copied through a
        sliding-window view of it (one memcpy per row, no per-token index arithmetic: ~8x faster
        than a fancy-index gather for 32 x 1025); the rare row that spans two shards is joined."""
        starts = np.asarray(starts, dtype=np.int64)
        if out is None:
            out = np.empty((len(starts), length), dtype=np.int64)
        if not len(starts):
            return out
        if starts.min() < 0 or starts.max() + length > len(self):
            raise IndexError(f"a window of {length} tokens is out of range for {len(self)} tokens")
        glob = starts + self._start
        which = np.searchsorted(self._starts, glob, side="right") - 1
        inside = glob + length <= self._starts[which + 1]
        for s in np.unique(which[inside]):
            rows = np.flatnonzero(inside & (which == s))
            out[rows] = self._sliding(int(s), length)[glob[rows] - self._starts[s]]
        for row in np.flatnonzero(~inside):
            out[row] = self._range(int(glob[row]), int(glob[row]) + length)
        return out

    def _sliding(self, shard: int, length: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_views", {})
        view = cache.get((shard, length))
        if view is None:
            arr = self._arrays[shard]
            view = np.lib.stride_tricks.sliding_window_view(arr, length) if len(arr) >= length else arr[:0, None]
            cache[(shard, length)] = view
        return view

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # type: ignore[no-untyped-def]
        arr = self._range(self._start, self._stop)
        arr = np.array(arr, copy=True) if isinstance(arr, np.memmap) or arr.base is not None else arr
        return arr.astype(dtype) if dtype is not None else arr
