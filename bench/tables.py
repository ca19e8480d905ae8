#!/usr/bin/env python
"""Render the benchmark tables in ``docs/*.md`` from ``bench/results/*.json`` (``bench/run_all.py``).

    .venv/bin/python bench/tables.py            # rewrite every generated block in docs/
    .venv/bin/python bench/tables.py --check    # exit 1 if any block differs from its JSON

A doc holds a generated block wherever it has the two markers

    <!-- bench:NAME:begin -->
    <!-- bench:NAME:end -->

and everything between them is replaced by the render of ``bench/results/NAME.json``: the exact
command, commit, machine, date and load, then the figures that ``bench/table_specs.py`` declares
for NAME (label, JSON field, unit, target, and whether the figure repeats exactly on a re-run).
Text outside the markers is never touched.  A results file with ``"provenance"`` (figures
transcribed, not re-run) says so in bold in its block.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_specs import KIND_NOTE, RENDERED_ELSEWHERE, SPECS, Fig, RenderError, Table, lookup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[A-Za-z0-9_]+):begin -->\n)(?P<body>.*?)(<!-- bench:(?P=name):end -->)", re.S)


def load_result(name: str, results: Path = RESULTS) -> dict:
    """``results/<name>.json`` as written by run_all.py.

    Errors: RenderError naming the file when it is missing, not JSON, or lacks ``result``.
    """
    path = results / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RenderError(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist "
                          f"(run: .venv/bin/python bench/run_all.py --quick --only {name})") from None
    except json.JSONDecodeError as exc:
        raise RenderError(f"{path}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
        raise RenderError(f"{path}: no 'result' object")
    return record


def header(record: dict) -> list[str]:
    """The block's provenance lines: command, commit, date, load, wall time, machine.

    A transcribed record may give ``machine`` as ``{"description": text}`` and ``load_avg`` as text.
    """
    m = record.get("machine", {})
    machine = m.get("description") or (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gib', '?')} GiB, "
                                       f"torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('os', '?')}")
    load = record.get("load_avg") or {}
    load_s = (f"load average {load}" if isinstance(load, str) else
              f"load average {load.get('start')} → {load.get('end')}" if load else "load average not recorded")
    wall = "" if record.get("wall_s") is None else f"wall {record['wall_s']} s · "
    lines = []
    if record.get("exit_status"):
        lines += [f"**The bench exited with status {record['exit_status']} (its own verdict: a target missed).**", ""]
    if record.get("provenance"):
        lines += [f"**Provenance: {record['provenance']}.**", ""]
    lines += [
        f"`{record.get('command', '?')}`",
        "",
        f"commit `{record.get('commit', '?')}` · {record.get('date', '?')} · {load_s} · "
        f"{wall}{machine}",
    ]
    return lines


def _figure_table(figs: tuple[Fig, ...], result: dict, name: str) -> list[str]:
    rows = ["| figure | result | target | on a re-run |", "|---|--:|---|---|"]
    for fig in figs:
        rows.append(f"| {fig.label} | {fig.render(result, name)} | {fig.target} | {KIND_NOTE[fig.kind]} |")
    return rows


def _row_table(table: Table, result: dict, name: str) -> list[str]:
    items = [result] if table.rows == "." else lookup(result, table.rows, name)
    if not isinstance(items, list):
        raise RenderError(f"{name}: field {table.rows!r} is not a list")
    items = [i for i in items if all(lookup(i, f, name) == v for f, v in table.where)]
    cols = table.figs
    head = "| " + " | ".join(f"{c.label}{' (' + c.unit + ')' if c.unit else ''}" for c in cols) + " |"
    rows = [head, "|" + "|".join("---" if i == 0 else "--:" for i in range(len(cols))) + "|"]
    for item in items:
        rows.append("| " + " | ".join(c.render(item, name, with_unit=False) for c in cols) + " |")
    plain = {c: c.label.replace("**", "") for c in cols}
    targets = [f"{plain[c]}: {c.target}" for c in cols if c.target]
    kinds = sorted({c.kind for c in cols[1:]})
    note = "; ".join(f"{', '.join(plain[c] for c in cols[1:] if c.kind == k)}: {KIND_NOTE[k]}" for k in kinds)
    if targets:
        rows += ["", f"Target: {'; '.join(targets)}."]
    return rows + ["", f"On a re-run — {note}."]


def render_block(name: str, results: Path = RESULTS) -> str:
    """The markdown between NAME's markers: provenance lines, then the declared tables.

    Benches without a spec in table_specs.SPECS get every top-level scalar of their result.
    Errors: RenderError (see load_result; a declared field missing from the result).
    """
    record = load_result(name, results)
    result = record["result"]
    lines = [f"<!-- generated by bench/tables.py from bench/results/{name}.json; do not edit: re-run the bench -->"]
    lines += header(record)
    spec = SPECS.get(name)
    if spec is None:
        figs = tuple(Fig(k, k, kind="timing") for k, v in result.items() if isinstance(v, (int, float, str, bool)))
        spec = (Table(figs=figs),)
    for table in spec:
        lines.append("")
        if table.caption:
            lines += [table.caption, ""]
        lines += _figure_table(table.figs, result, name) if table.rows is None else _row_table(table, result, name)
    return "\n".join(lines) + "\n"


def render_doc(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every marker block re-rendered; also the names of the blocks found.

    Errors: RenderError from any block.
    """
    names: list[str] = []

    def sub(match: re.Match) -> str:
        names.append(match["name"])
        return match.group(1) + render_block(match["name"], results) + match.group(4)

    return BLOCK.sub(sub, text), names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc differs from its render")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("docs", nargs="*", type=Path, help="markdown files (default: docs/*.md)")
    args = parser.parse_args(argv)
    docs = args.docs or sorted(DOCS.glob("*.md"))
    stale: list[str] = []
    rendered_names: list[str] = []
    for doc in docs:
        try:
            text = doc.read_text()
            new, names = render_doc(text, args.results)
        except (OSError, RenderError) as exc:
            print(f"tables: {doc}: {exc}", file=sys.stderr)
            return 2
        rendered_names += names
        if new != text:
            stale.append(str(doc))
            if not args.check:
                doc.write_text(new)
    unrendered = sorted({p.stem for p in args.results.glob("*.json")} - set(rendered_names) - set(RENDERED_ELSEWHERE))
    if unrendered:
        print(f"tables: results with no block in the docs: {', '.join(unrendered)}", file=sys.stderr)
    if args.check and stale:
        print(f"tables: out of date with bench/results: {', '.join(stale)} "
              f"(run .venv/bin/python bench/tables.py, or re-run the benches)", file=sys.stderr)
        return 1
    print(f"tables: {len(rendered_names)} blocks {'checked' if args.check else 'rendered'}"
          f"{'' if args.check else f', {len(stale)} file(s) changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
