"""Key bindings and styles of the monitoring views (m smoothing, space mark, o overlay, x axis, a alerts)."""

from __future__ import annotations

from typing import Any

from prompt_toolkit.filters import Filter
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from tritter.clients.tui.extras import SMOOTHING_LEVELS

MONITOR_STYLES: dict[str, str] = {
    "eval": "#ffaf00 bold",
    "smooth": "#5fafff bold",
    "sample": "#d7d7af",
    "gauge": "#87d787",
    "alert.info": "#87afd7",
    "alert.warning": "#d7d700 bold",
    "alert.critical": "#ff5f5f bold",
    "run0": "#5fafff", "run1": "#ffaf00", "run2": "#87d787", "run3": "#d787d7", "run4": "#ff5f5f", "run5": "#d7d7d7",
}


def next_smoothing(current: float) -> float:
    """The level after ``current`` in SMOOTHING_LEVELS (wrapping to off)."""
    later = [level for level in SMOOTHING_LEVELS if level > current]
    return later[0] if later else SMOOTHING_LEVELS[0]


def add_monitoring_keys(kb: KeyBindings, free: Filter, tui: Any) -> None:
    """Bind the monitoring keys on ``kb`` for the ``Tui`` ``tui`` (its ``view``, ``monitor``, ``say``)."""

    @kb.add("m", filter=free)
    def _smooth(event: KeyPressEvent) -> None:
        tui.view.smoothing = next_smoothing(tui.view.smoothing)
        tui.say(f"smoothing {tui.view.smoothing:g}" if tui.view.smoothing else "smoothing off")

    @kb.add("space", filter=free)
    def _mark(event: KeyPressEvent) -> None:
        state = tui.monitor.selected(tui.view)
        if state is None:
            return
        marked = tui.view.marked
        marked.symmetric_difference_update({state.run_id})
        tui.say(f"{len(marked)} run(s) marked" + (" · o overlays them" if len(marked) >= 2 else ""))

    @kb.add("o", filter=free)
    def _overlay(event: KeyPressEvent) -> None:
        if not tui.view.overlay and len(tui.view.marked & set(tui.monitor.runs)) < 2:
            tui.say("mark two or more runs with space first", error=True)
            return
        tui.view.overlay = not tui.view.overlay
        tui.view.alerts = False

    @kb.add("x", filter=free)
    def _axis(event: KeyPressEvent) -> None:
        tui.view.by_tokens = not tui.view.by_tokens
        tui.say("overlay x axis: " + ("tokens trained" if tui.view.by_tokens else "global step"))

    @kb.add("a", filter=free)
    def _alerts(event: KeyPressEvent) -> None:
        tui.view.alerts = not tui.view.alerts
