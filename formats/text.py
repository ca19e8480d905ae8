"""User text (run names, reasons, paths) made safe to show: in a terminal table, a log line,
or a Markdown model card.

A run may be named ``tab<TAB>name``, ``a|b``, ``名前`` or contain an escape sequence.  Shown raw,
a tab or a wide character shifts every column after it, a newline or ``|`` breaks a Markdown
table, and ``ESC [`` can rewrite the user's terminal.  So: control characters are shown escaped
(``\\t``, ``\\x1b``), widths are terminal cells measured with ``wcwidth`` (the library terminals'
own tables follow), and Markdown table cells escape ``|``.
"""

from __future__ import annotations

import logging
import math
import unicodedata

from wcwidth import wcswidth, wcwidth

ELLIPSIS = "…"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Bidirectional overrides and isolates reorder what follows them on screen ("Trojan Source").
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` with every control character escaped: ``\\t``, ``\\n``, ``\\r``, else ``\\xNN`` /
    ``\\uNNNN`` (C0, DEL, C1, line/paragraph separators, bidi overrides).  Other text is kept.

    Returns a string that occupies one line and cannot move the cursor or restyle a terminal.
    """
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def display_width(text: str) -> int:
    """Terminal cells ``printable(text)`` occupies (a CJK character is 2, a combining mark 0)."""
    shown = printable(text)
    width = wcswidth(shown)
    return width if width >= 0 else sum(max(0, wcwidth(ch)) for ch in shown)


def clip(text: str, cols: int, ellipsis: str = ELLIPSIS) -> str:
    """``printable(text)`` cut to at most ``cols`` cells; a cut text ends with ``ellipsis``.

    Never splits a wide character over the limit (the cell it would overflow is left empty
    by ``fit``).  Returns the clipped string (its width may be ``cols - 1`` after a wide char).
    """
    shown = printable(text)
    if display_width(shown) <= cols:
        return shown
    room = cols - display_width(ellipsis) if ellipsis else cols
    out, used = [], 0
    for ch in shown:
        w = max(0, wcwidth(ch))
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + (ellipsis if cols > 0 and ellipsis else "")


def fit(text: str, cols: int, right: bool = False) -> str:
    """``text`` clipped and padded with spaces to exactly ``cols`` terminal cells.

    ``right`` aligns it to the right.  Returns a string whose ``display_width`` is ``cols``.
    """
    shown = clip(text, cols)
    pad = " " * max(0, cols - display_width(shown))
    return pad + shown if right else shown + pad


def md_cell(text: str) -> str:
    """``text`` for one cell of a Markdown (GFM) table: control characters escaped, ``|`` and
    ``\\`` backslash-escaped, so it can neither end the cell nor the row."""
    return printable(text).replace("\\", "\\\\").replace("|", "\\|")


def md_inline(text: str) -> str:
    """``text`` for a Markdown heading or paragraph: one line, and Markdown's markup characters
    (``*_`[]<>#|\\``) escaped so a name is shown as typed."""
    shown = printable(text).replace("\\", "\\\\")
    for ch in "*_`[]<>#|":
        shown = shown.replace(ch, "\\" + ch)
    return shown


class PrintableFormatter(logging.Formatter):
    """A log formatter that shows a record's message through ``printable``: a run name with a
    newline or an escape sequence cannot forge a log line or restyle the terminal.  Tracebacks
    (``exc_info``) keep their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """Format ``record`` after passing its message through ``printable`` (control characters escaped); returns
        the line."""
        record.message = printable(record.message)
        return super().formatMessage(record)


def fmt_duration(seconds: float | None) -> str:
    """Seconds as a compact duration: ``42s``, ``3m07s``, ``2h05m``, ``1d03h``; ``-`` for None,
    non-finite or negative values (an ETA that cannot be known)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def printable_logs() -> None:
    """Give every handler of the root logger a ``PrintableFormatter`` with its current format.

    Call it right after ``logging.basicConfig``.
    """
    for handler in logging.getLogger().handlers:
        old = handler.formatter
        handler.setFormatter(PrintableFormatter(old._fmt if old else None, old.datefmt if old else None))  # noqa: SLF001
