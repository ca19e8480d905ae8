"""What a file is, from its first bytes: every tool decides by content, never by name.

A compressed checkpoint renamed to ``x.bin`` is still a ``.safetensors.tzst``; a ``.safetensors``
name on a zip archive is still a zip archive.  ``describe`` says what a file that is neither
actually looks like, so an error can name it ("a zip archive (torch.save .pt/.bin?)").
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

TZST_MAGIC = b"TRTZCKPT"  # formats/codec.py's container (kept equal there)
TZST = "tzst"
SAFETENSORS = "safetensors"
_PROBE = 4096
MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB

# (prefix, description) of formats people hand to checkpoint tools by mistake.
_KNOWN: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (a torch.save .pt/.bin file?)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x28\xb5\x2f\xfd", "a plain zstd file (not a tritter .safetensors.tzst)"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"\x89HDF", "an HDF5 file (Keras .h5?)"),
    (b"GGUF", "a GGUF model file"),
    (b"TRTLOG1\n", "a tritter event log"),
    (b"\x93NUMPY", "a NumPy .npy array"),
)


def kind(path: Path) -> str:
    """``"tzst"``, ``"safetensors"`` or ``""`` (something else) from the file's first bytes.

    Raises OSError when the file cannot be opened or read (missing, a folder, no permission).
    """
    with open(path, "rb") as f:
        head = f.read(_PROBE)
        size = f.seek(0, 2)
    if head.startswith(TZST_MAGIC):
        return TZST
    if len(head) >= 9:
        (length,) = struct.unpack_from("<Q", head)
        # A safetensors header: a JSON object of `length` bytes right after the 8-byte length
        # (a length past the end still says safetensors: a truncated one, which the parser names).
        if 2 <= length <= MAX_HEADER and head[8:9] == b"{":
            return SAFETENSORS
    return ""


def describe(path: Path) -> str:
    """A few words on what ``path`` is, for a file that is neither checkpoint format.

    Returns e.g. "an empty file", "too short to be a checkpoint (4 bytes)", "a zip archive (...)",
    "a safetensors header length past the end of the file (...)", "a text file", "a JSON file",
    "a file of 1,234 bytes in no format tritter knows".  Raises OSError like ``kind``.
    """
    with open(path, "rb") as f:
        head = f.read(_PROBE)
        size = f.seek(0, 2)
    if size == 0:
        return "an empty file"
    if head.startswith(TZST_MAGIC) and size < 16:
        return "a truncated .safetensors.tzst file"
    for prefix, what in _KNOWN:
        if head.startswith(prefix):
            return what
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (torch.save legacy format?)"
    if head[8:9] == b"{" and head[7] == 0:  # shaped like safetensors, but `kind` refused its header length
        (length,) = struct.unpack_from("<Q", head)
        if length > size - 8:
            return f"a safetensors header length past the end of the file ({length:,} bytes said, {size - 8:,} there)"
        if length > MAX_HEADER:
            return f"a safetensors header over the {MAX_HEADER // (1024 * 1024)} MiB limit ({length:,} bytes)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    try:
        if text and size <= _PROBE:
            json.loads(text)
            return "a JSON file"
    except ValueError:
        pass
    if size < 9:  # not even a safetensors length word and one header byte
        return f"too short to be a checkpoint ({size} byte{'s' if size != 1 else ''})"
    if not text or "\x00" in text:  # NUL bytes decode as UTF-8 but no text file holds them
        return f"a file of {size:,} bytes in no format tritter knows"
    return "a text file"


def is_tzst_file(path: Path) -> bool:
    """True when ``path`` starts with the .safetensors.tzst magic (False if it cannot be read)."""
    try:
        return kind(path) == TZST
    except OSError:
        return False
