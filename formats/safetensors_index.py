"""The safetensors layout as the ``.tzst`` codec sees it: tensor byte ranges, from the header alone.

``formats/codec.py`` re-exports everything here; ``formats/tzst_v2.py`` uses it to read a raw
checkpoint tensor by tensor without loading the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

MAX_HEADER = 100_000_000  # safetensors refuses JSON headers over 100 MB


class CodecError(Exception):
    """The input is not usable: corrupt, truncated, not a checkpoint, or a wrong delta base."""


class BaseMismatchError(CodecError):
    """A delta file's base is missing or is not the file it was made from."""


@dataclass(frozen=True)
class TensorSpan:
    """One tensor of a safetensors file: name, dtype (``F32``, ``BF16``, ...), shape, and its
    absolute byte range ``[start, end)`` in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def header_length(prefix: bytes | memoryview, size: int) -> int:
    """Bytes of the safetensors header (8-byte length + JSON), from the file's first 8 bytes.

    ``size``: the whole file's size.  Raises CodecError when it cannot be a safetensors file.
    """
    if size < 8 or len(prefix) < 8:
        raise CodecError("not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack_from("<Q", prefix, 0)
    if n > size - 8 or n > MAX_HEADER:
        raise CodecError("not a safetensors file (header length past the end of the file)")
    return 8 + n


def parse_header(head: bytes | memoryview, size: int) -> tuple[int, list[TensorSpan], dict[str, str]]:
    """(data start offset, tensors sorted by offset, ``__metadata__``) from the header bytes.

    ``head``: at least the first ``header_length`` bytes of the file; ``size``: the file's size
    (tensors must end within it).  Raises CodecError when malformed.
    """
    data_start = header_length(head, size)
    if len(head) < data_start:
        raise CodecError("not a safetensors file (truncated header)")
    try:
        header = json.loads(bytes(head[8:data_start]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CodecError("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CodecError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    spans = []
    try:
        for name, info in header.items():
            begin, end = (int(x) for x in info["data_offsets"])
            spans.append(TensorSpan(name, str(info["dtype"]), tuple(int(x) for x in info["shape"]), data_start + begin, data_start + end))
    except (KeyError, TypeError, ValueError):
        raise CodecError("not a safetensors file (malformed tensor entry)") from None
    spans.sort(key=lambda s: (s.start, s.end))
    pos = data_start
    for s in spans:
        if s.end > size >= s.start >= pos:
            raise CodecError(f"truncated: tensor {s.name!r} ends {s.end - size:,} bytes past the end of the file")
        if s.start < pos or s.end < s.start or s.end > size:
            raise CodecError(f"not a safetensors file (tensor {s.name!r} overlaps or runs past the end)")
        pos = s.end
    return data_start, spans, metadata


def parse_safetensors(data: bytes | memoryview) -> tuple[int, list[TensorSpan], dict[str, str]]:
    """(header end offset, tensors sorted by offset, metadata) of whole-file bytes; CodecError if malformed."""
    return parse_header(data, len(data))


def safetensors_metadata(data: bytes | memoryview) -> dict[str, str]:
    """The ``__metadata__`` dict of safetensors bytes (e.g. from ``read_safetensors_bytes``)."""
    return parse_safetensors(data)[2]
