"""``tritterctl`` helpers for the monitoring events (eval, sample, system, alert): one-line formats,
the ``events --kind`` filter and ``start --sample-prompts FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tritter.formats.pathkind import special_path_problem
from tritter.protocol.config import MAX_PROMPT_CHARS, MAX_SAMPLE_PROMPTS
from tritter.protocol.oserrors import error_reason
from tritter.protocol.events import EVENT_KINDS, AlertEvent, AnyEvent, EvalEvent, SampleEvent, SystemEvent


def parse_kinds(text: str) -> frozenset[str]:
    """``--kind alert,eval`` -> {"alert", "eval"}.  ValueError (one line) naming an unknown kind."""
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(EVENT_KINDS))
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event kind {', '.join(map(repr, unknown)) or repr(text)} (choose from {', '.join(EVENT_KINDS)})")
    return frozenset(kinds)


def read_prompts(path: Path | None) -> list[str] | None:
    """The prompts of ``--sample-prompts FILE``: one per non-empty line (UTF-8), at most
    MAX_SAMPLE_PROMPTS of at most MAX_PROMPT_CHARS characters.  None without a file.
    ValueError (one line) when the file cannot be read or breaks a bound."""
    if path is None:
        return None
    if problem := special_path_problem(path, "--sample-prompts", folder_ok=False):  # a FIFO would block the read
        raise ValueError(problem)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--sample-prompts {path}: cannot read it: {error_reason(error)}") from None
    prompts = [line.rstrip() for line in lines if line.strip()]
    if not 1 <= len(prompts) <= MAX_SAMPLE_PROMPTS:
        raise ValueError(f"--sample-prompts {path}: needs 1 to {MAX_SAMPLE_PROMPTS} prompts (one per line), found {len(prompts)}")
    long = [i + 1 for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS]
    if long:
        raise ValueError(f"--sample-prompts {path}: prompt {long[0]} is longer than {MAX_PROMPT_CHARS} characters")
    return prompts


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.1f} GB"


def _one_line(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_monitoring(event: AnyEvent, head: str) -> str | None:
    """The ``tritterctl events`` line of a monitoring event (``head`` = seq, time, run, kind);
    None for other kinds."""
    if isinstance(event, EvalEvent):
        return f"{head} step {event.step} held-out loss {event.loss:.4f} perplexity {event.perplexity:.1f} ({event.elapsed_ms:.0f} ms)"
    if isinstance(event, SampleEvent):
        first = event.samples[0] if event.samples else None
        text = f" {_one_line(first.prompt, 30)!r} -> {_one_line(first.greedy.replace(chr(10), '⏎ '))!r}" if first else ""
        return f"{head} step {event.step} {len(event.samples)} prompt(s){text}"
    if isinstance(event, SystemEvent):
        gpus = "".join(
            f" | gpu{g.index} {'-' if g.utilization_pct is None else f'{g.utilization_pct:.0f}%'} "
            f"{_gb(g.memory_used_bytes)}/{_gb(g.memory_total_bytes)}"
            + (f" {g.temperature_c:.0f}C" if g.temperature_c is not None else "")
            + (f" {g.power_w:.0f} W" if g.power_w is not None else "")
            for g in event.gpus)
        return (f"{head} cpu {event.cpu_percent:.0f}% rss {_gb(event.rss_bytes)} host "
                f"{_gb(event.host_memory_used_bytes)}/{_gb(event.host_memory_total_bytes)}{gpus}")
    if isinstance(event, AlertEvent):
        return f"{head} {event.level.upper()} {event.reason} at step {event.step}" + (f": {event.message}" if event.message else "")
    return None


# -- files the recorder writes next to metrics.jsonl ---------------------------------------------
# kind -> file name under HOME/runs/<run_id>/; one line per event, keyed (and deduplicated) by step.
RECORD_FILES: dict[str, str] = {"eval": "eval.jsonl", "sample": "samples.jsonl"}
_ENVELOPE = ("seq", "run_id", "v")


def monitoring_record(event: EvalEvent | SampleEvent) -> dict[str, object]:
    """An ``eval.jsonl`` / ``samples.jsonl`` line: the event's fields without the envelope
    (``seq``, ``run_id``, ``v``), ``ts`` kept.  Decodes back with ``msgspec.json.decode(line, type=EvalEvent)``."""
    import msgspec

    record = msgspec.to_builtins(event)
    for name in (*_ENVELOPE, "kind"):
        record.pop(name, None)
    return record


def status_lines(state: object) -> list[str]:
    """``tritterctl status`` lines for a ``RunState``: the latest periodic eval and the alerts."""
    lines = []
    eval_loss = getattr(state, "eval_loss", None)
    if eval_loss is not None:
        lines.append(f"eval       held-out loss {eval_loss:.4f}, perplexity {getattr(state, 'eval_perplexity', 0) or 0:.1f} "
                     f"at step {getattr(state, 'eval_step', 0)}")
    alerts = getattr(state, "alerts", [])
    if alerts:
        last = alerts[-1]
        lines.append(f"alerts     {getattr(state, 'alert_count', len(alerts))}, newest: {last.level} {last.reason} "
                     f"at step {last.step}" + (f": {last.message}" if last.message else ""))
    return lines
