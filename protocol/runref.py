"""How a user names a run: its id, a unique part of the id (the start or the tail), or its name.

Run ids are ``YYYYMMDD-HHMMSS-xxxx``: the date makes prefixes long to type, so the short random
tail a user sees (``3dc5``) names a run too.  Shared by the daemon and offline readers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tritter.protocol.state import RunState

MAX_CANDIDATES = 10  # listed in an ambiguity error; more are summarised as a count


def resolve_run_ref(runs: Iterable[RunState], ref: str) -> RunState:
    """The one run ``ref`` names, in this order of preference:

    1. the exact run id;
    2. the exact run name (names are chosen by the user, so they win over id fragments);
    3. a unique id prefix or suffix (at least 2 characters; ``20261130`` or ``3dc5``).

    Args:
        runs: every run the caller knows (any order).
        ref: what the user typed.
    Returns:
        The matching ``RunState``.
    Raises:
        LookupError: with one line a user can act on: nothing matches, or several runs do
            (the line lists the candidates' ids and names).
    """
    runs = list(runs)
    if not ref.strip():
        raise LookupError("an empty run reference matches nothing (give a run id, part of one, or a name)")
    for r in runs:
        if r.run_id == ref:
            return r
    matches = [r for r in runs if r.run_name == ref]
    if not matches and len(ref) >= 2:
        matches = [r for r in runs if r.run_id.startswith(ref) or r.run_id.endswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        matches.sort(key=lambda r: r.run_id)
        listed = ", ".join(f"{r.run_id} ({r.run_name!r})" for r in matches[:MAX_CANDIDATES])
        more = f" and {len(matches) - MAX_CANDIDATES} more" if len(matches) > MAX_CANDIDATES else ""
        raise LookupError(f"run {ref!r} is ambiguous; it matches {listed}{more} (give more of the id)")
    raise LookupError(f"no run {ref!r} (see: tritterctl runs)")
