"""argparse value types that check a number's range where it is typed (one clear line, exit 2).

Shared by the daemon's and the clients' command lines (``tritter.recipe.budget.budget_type``
adds the size and budget suffixes).

An unchecked number travels to the daemon (where msgpack cannot even encode integers past
64 bits) or into a sleep/timeout (``inf``, ``nan``), and fails far from the flag that caused
it.  Every numeric flag of every tritter command uses these.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

# Seq numbers, counts and steps: anything past 2**53 is no longer exact as a JSON number.
MAX_COUNT = 2**53


def bounded_int(low: int, high: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]``.

    Args:
        low, high: inclusive bounds.
        what: the noun used in the error ("an integer", "a step count", ...).
    Returns:
        A callable ``str -> int`` raising ``argparse.ArgumentTypeError`` with one line.
    """

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} between {low:,} and {high:,}, got {text!r}") from None
        if not low <= value <= high:
            shown = text if len(text) <= 24 else text[:20] + "…"
            raise argparse.ArgumentTypeError(f"{shown} is out of range (expected {what} between {low:,} and {high:,})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def bounded_float(low: float, high: float, what: str = "a number", *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite floats in ``[low, high]`` (``(low, high]`` with ``low_open``).

    ``nan`` and ``inf`` are refused: as a timeout or delay they would mean "never" or "error"
    somewhere far from the flag.
    Returns a callable ``str -> float`` raising ``argparse.ArgumentTypeError`` with one line.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (expected {what}, {bound} and at most {high:g})")
        return value

    parse.__name__ = "number"
    return parse


def nonempty_text(what: str = "a value") -> Callable[[str], str]:
    """An argparse ``type`` refusing an empty or blank string (``--text-field ''``), one line."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty string")
        return text

    parse.__name__ = "text"
    return parse


def path_arg(text: str) -> Path:
    """An argparse ``type`` for a path: an empty string is refused (``--corpus ''`` would otherwise
    mean the current folder, ``--home ''`` the default home), ``~`` is expanded."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text).expanduser()


path_arg.__name__ = "path"
