"""How users name runs, and how names are shown: a unique id suffix or prefix names a run
(ambiguity lists the candidates); names with tabs, '|', wide characters or escape sequences
never break a table (tritterctl runs, the monitor, the model card); a name that cannot be a
Hugging Face repo id is refused at ``start`` when the run would upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wcwidth import wcswidth

from conftest import Daemon, ctl
from crafted import run_events, write_log
from tritter.clients.tui.model import Monitor
from tritter.clients.tui.render import runs_table, plain
from tritter.protocol.state import RunState

NAMES = ["tab\tname", "a|b", "名前のラン", "esc\x1b[31mred", "plain"]
IDS = ["20260101-000000-3dc5", "20260101-000001-77ab", "20260102-000000-9f10", "20260102-000001-abcd", "20260103-000000-0dc5"]


@pytest.fixture
def named_home(home: Path) -> Path:
    events = []
    for run_id, name in zip(IDS, NAMES):
        events += run_events(run_id, name, "stopped")
    write_log(home, events)
    return home


def test_a_unique_suffix_names_a_run_and_ambiguity_lists_candidates(named_home: Path) -> None:
    daemon = Daemon(named_home).start()
    try:
        status = json.loads(ctl(named_home, "status", "3dc5", "--json").stdout)
        assert status["run_id"] == "20260101-000000-3dc5"
        assert json.loads(ctl(named_home, "status", "20260102-000000", "--json").stdout)["run_id"] == IDS[2]  # prefix
        assert json.loads(ctl(named_home, "status", "a|b", "--json").stdout)["run_id"] == IDS[1]  # name
        amb = ctl(named_home, "status", "20260102", check=False)  # a prefix of two runs
        assert amb.returncode == 2 and len(amb.stderr.strip().splitlines()) == 1
        assert IDS[2] in amb.stderr and IDS[3] in amb.stderr and "ambiguous" in amb.stderr
        ambs = ctl(named_home, "status", "dc5", check=False)  # the tail of two runs
        assert ambs.returncode == 2 and IDS[0] in ambs.stderr and IDS[4] in ambs.stderr and "'plain'" in ambs.stderr
        missing = ctl(named_home, "status", "ffff", check=False)
        assert missing.returncode == 2 and "no run 'ffff'" in missing.stderr
    finally:
        daemon.stop()


def _column_starts(line: str, titles: list[str], header: str) -> list[int]:
    """Display cell where each column starts in ``line`` (by the header's column positions)."""
    return [wcswidth(header[: header.index(t)]) for t in titles]


def test_runs_table_columns_line_up_whatever_the_names(named_home: Path) -> None:
    daemon = Daemon(named_home).start()
    try:
        out = ctl(named_home, "runs").stdout.splitlines()
    finally:
        daemon.stop()
    header, rows = out[0], out[1:]
    assert len(rows) == len(NAMES)
    status_at = wcswidth(header[: header.index("STATUS")])
    for row in rows:
        assert "\x1b" not in row and "\t" not in row, repr(row)  # control characters shown escaped
        # the text before the status column is exactly as wide as the header's, in terminal cells
        cut = next(i for i in range(len(row)) if wcswidth(row[:i]) == status_at)
        assert row[cut:].startswith("stopped"), (repr(row), status_at)
    assert "a|b" in "\n".join(rows) and "名前のラン" in "\n".join(rows) and "tab\\tname" in "\n".join(rows)


def test_monitor_table_columns_line_up_whatever_the_names() -> None:
    monitor = Monitor()
    runs = [RunState(run_id=i, run_name=n, status="stopped") for i, n in zip(IDS, NAMES)]
    for r in runs:
        monitor.runs[r.run_id] = r
    lines = runs_table(runs, {}, None, 100, 20)
    text = plain(lines).splitlines()
    header = text[0]
    status_at = wcswidth(header[: header.index("STATUS")])
    for row in text[1:]:
        assert "\x1b" not in row and "\t" not in row, repr(row)
        cut = next(i for i in range(len(row) + 1) if wcswidth(row[:i]) >= status_at)
        assert row[cut:].startswith("stopped"), repr(row)
    for line in lines:  # every rendered line is exactly the screen width, in cells
        assert wcswidth("".join(t for _, t in line)) == 100


def test_model_card_table_keeps_its_columns(tmp_path: Path) -> None:
    from tritter.daemon.engine.export import StageCard, model_card

    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "vocab_size": 8192,
              "max_position_embeddings": 256}
    card = model_card(StageCard(run_id=IDS[1], run_name="a|b\nc", stage="tiny", corpus="/data/x|y.txt"), 1000, config,
                      folder=tmp_path)
    rows = [line for line in card.splitlines() if line.startswith("|")]
    assert rows, card
    for row in rows:  # every table row has exactly two cells: unescaped '|' only at the borders
        cells = [c for c in __import__("re").split(r"(?<!\\)\|", row)]
        assert len(cells) == 4, row  # '', cell, cell, ''
    assert "a\\|b\\\\nc" in card  # the name, shown as typed
    assert "# a\\|b\\\\nc — stage" in card  # the heading stays one line


def test_an_invalid_hub_repo_name_is_refused_at_start(daemon: Daemon, home: Path) -> None:
    daemon.start()
    bad = ctl(home, "start", "--end", "tiny", "--steps", "1", "--name", "my run", "--upload", "--hf-user", "someone", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "someone/my run" in bad.stderr and "HFValidationError" not in bad.stderr
    too_long = ctl(home, "start", "--end", "tiny", "--name", "n" * 97, "--hf-user", "someone", check=False)
    assert too_long.returncode == 2 and "96" in too_long.stderr  # tritter allows 100, the hub 96
    assert ctl(home, "runs", "--json").stdout.strip() == "[]"  # nothing started


def test_the_daemon_checks_the_repo_name_too(daemon: Daemon, home: Path) -> None:
    """A remote client may skip the client-side check: the daemon refuses on its own."""
    import msgspec
    import zmq

    from tritter.protocol.control import Reply
    from tritter.protocol.home import Layout
    from tritter.protocol.wire import decode_as

    daemon.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(Layout(home).api_endpoint)
        sock.send(msgspec.msgpack.encode({"op": "start", "config": {"start": "tiny", "end": "tiny", "name": "my run",
                                                                    "upload": True, "hf_user": "someone"}}))
        assert sock.poll(10_000)
        reply = decode_as(sock.recv_multipart()[-1], Reply)
    finally:
        sock.close()
        ctx.term()
    assert not reply.ok and "someone/my run" in reply.error


def test_log_lines_show_user_text_escaped() -> None:
    """Daemon, worker and sinks log through PrintableFormatter: a name cannot forge a log line."""
    import io
    import logging

    from tritter.formats.text import PrintableFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tritter-test-names")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("run %s started", "evil\nERROR forged line\x1b[2J")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING run evil\\nERROR forged line\\x1b[2J started"
    assert lines[1] == "ERROR with a traceback" and lines[2].startswith("Traceback")  # tracebacks keep their lines
