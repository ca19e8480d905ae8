"""A user-given path that is not a regular file or folder (a FIFO, a socket, a device) is refused
in one line before anything opens it, so nothing — tritterd's event loop, a worker, a client —
ever blocks on it (formats/pathkind.py, daemon/startcheck.py, docs/data.md "Bad input").

Real FIFOs (``os.mkfifo``), a real bound Unix socket, ``/dev/null``, a real tritterd subprocess.
Every read that could block is run where a hang fails the test instead of freezing it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Daemon, ctl
from tritter.clients.connection import Connection, RequestFailed
from tritter.daemon.startcheck import check_start_paths, in_daemon_thread
from tritter.formats.corpus import DataError, list_corpus
from tritter.formats.pathkind import NotRegularFile, open_regular, special_path_problem
from tritter.formats.tokenizer import load_tokenizer_spec
from tritter.protocol.config import RunConfig
from tritter.protocol.control import Runs, Start
from tritter.protocol.home import Layout

PROSE = "".join(f"Line {i}: it is a truth universally acknowledged, that a single man in possession of a good fortune.\n"
                for i in range(400))  # enough tokens for the tiny preset's held-out split


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritterctl: error: "), result.stderr
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr
    return lines[0]


def release(fifo: Path) -> None:
    """Unblock whoever is stuck opening ``fifo`` for reading (a failing test must not hang)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no reader waits: nothing to free
        os.close(fd)
    except OSError:
        pass


def returns_within(fn: Callable[[], object], fifo: Path, seconds: float = 10.0) -> object:
    """``fn()``'s result (or exception) from a thread; fails — and frees the thread — if it blocks."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        release(fifo)
        thread.join(5)
        raise AssertionError(f"blocked for {seconds} s on {fifo}")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock.txt"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    yield path
    server.close()


# --------------------------------------------------------------------------- the readers


def test_stat_names_each_kind_without_opening(tmp_path: Path, unix_socket: Path) -> None:
    fifo = tmp_path / "in.txt"
    os.mkfifo(fifo)
    (tmp_path / "plain.txt").write_text("x")
    assert special_path_problem(fifo, "--corpus") == f"--corpus {fifo} is a named pipe (FIFO), not a file or folder"
    assert special_path_problem(unix_socket) == f"{unix_socket} is a socket, not a file or folder"
    assert special_path_problem("/dev/null", "--tokenizer") == "--tokenizer /dev/null is a character device, not a file or folder"
    assert special_path_problem(tmp_path, "--sample-prompts", folder_ok=False) == f"--sample-prompts {tmp_path} is a folder, not a file"
    assert special_path_problem(tmp_path) is None and special_path_problem(tmp_path / "plain.txt") is None
    assert special_path_problem(tmp_path / "missing") is None  # the callers' own "not found" lines say that
    link = tmp_path / "link.txt"
    link.symlink_to(fifo)  # symlinks are followed: what is read is what counts
    assert "is a named pipe (FIFO)" in special_path_problem(link)


def test_readers_refuse_a_fifo_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match=r"corpus\.jsonl is a named pipe \(FIFO\), not a file$"):
        returns_within(lambda: open_regular(fifo), fifo)
    with pytest.raises(DataError, match=r"corpus\.jsonl is a named pipe \(FIFO\), not a file or folder"):
        returns_within(lambda: list_corpus(fifo), fifo)  # the worker's first step with a corpus
    tok = tmp_path / "tok.json"
    os.mkfifo(tok)
    with pytest.raises(DataError, match=r"tok\.json is a named pipe \(FIFO\)"):
        returns_within(lambda: load_tokenizer_spec(tok), tok)
    folder = tmp_path / "hf"  # a Hugging Face folder whose tokenizer.json is a FIFO
    folder.mkdir()
    os.mkfifo(folder / "tokenizer.json")
    with pytest.raises(DataError, match=r"hf/tokenizer\.json: cannot read: is a named pipe \(FIFO\), not a file"):
        returns_within(lambda: load_tokenizer_spec(folder), folder / "tokenizer.json")
    (tmp_path / "plain.txt").write_bytes(b"abc")
    with open_regular(tmp_path / "plain.txt") as f:  # a regular file reads as usual, in blocking mode
        assert f.read() == b"abc"


def test_corpus_folder_skips_fifo_and_socket_entries(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text(PROSE)
    os.mkfifo(folder / "b.txt")
    os.mkfifo(folder / "noext")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "s.txt"))
    try:
        files = returns_within(lambda: list_corpus(folder), folder / "b.txt")
    finally:
        server.close()
    assert [f.name for f in files] == ["a.txt"]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- off the event loop


def test_a_blocked_check_leaves_the_event_loop_running(tmp_path: Path) -> None:
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)

    async def scenario() -> tuple[int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await in_daemon_thread(lambda: open(fifo, "rb"), 0.5)  # a plain open really blocks on a FIFO
        waited = time.monotonic() - began
        task.cancel()
        return ticks, waited

    try:
        ticks, waited = asyncio.run(scenario())
    finally:
        release(fifo)  # the abandoned thread's open returns; it is a daemon thread either way
    assert ticks >= 10, ticks  # the loop kept running while the thread was stuck
    assert waited < 5.0


def test_start_check_past_its_time_refuses_the_start(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(PROSE)
    config = RunConfig(corpus=str(tmp_path / "a.txt"))
    assert asyncio.run(check_start_paths(config)) is None
    # No time at all: the (real) check cannot have answered yet, so the start is refused, not run later.
    line = asyncio.run(check_start_paths(config, timeout_s=0.0))
    assert line == f"checking --corpus {tmp_path / 'a.txt'} took longer than 0 s (a slow or hung file system?); the run was not started"


# --------------------------------------------------------------------------- through tritterd


def test_fifo_socket_and_device_paths_refused_at_start(home: Path, daemon: Daemon, tmp_path: Path, unix_socket: Path) -> None:
    daemon.start()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    tfifo = tmp_path / "tfifo.json"
    os.mkfifo(tfifo)
    good = tmp_path / "good.txt"
    good.write_text(PROSE)
    cases = [
        (["--corpus", str(fifo)], f"--corpus {fifo} is a named pipe (FIFO), not a file or folder"),
        (["--corpus", str(good), "--tokenizer", str(tfifo)], f"--tokenizer {tfifo} is a named pipe (FIFO), not a file or folder"),
        (["--sample-prompts", str(fifo)], f"--sample-prompts {fifo} is a named pipe (FIFO), not a file"),
        (["--corpus", str(unix_socket)], f"--corpus {unix_socket} is a socket, not a file or folder"),
        (["--corpus", "/dev/null"], "--corpus /dev/null is a character device, not a file or folder"),
    ]
    try:
        for args, message in cases:
            result = ctl(home, "start", "--end", "tiny", "--steps", "1", *args, check=False, timeout=30)
            assert one_line_error(result) == f"tritterctl: error: {message}"
            began = time.monotonic()
            runs = ctl(home, "runs", timeout=30)  # the daemon answers at once (ctl itself gives up after 5 s)
            assert "no runs yet" in runs.stdout, runs.stdout
            assert time.monotonic() - began < 5.0
        train = ctl(home, "tokenizer", "train", "--corpus", str(fifo), "--vocab-size", "300", "-o", str(tmp_path / "tok"),
                    check=False, timeout=30)  # on the client's machine, same readers
        assert one_line_error(train) == f"tritterctl: error: {fifo} is a named pipe (FIFO), not a file or folder"
    finally:
        release(fifo)
        release(tfifo)
    assert daemon.terminate(timeout=60) == 0  # no check thread left stuck that could hold up the exit


def test_corpus_folder_with_a_fifo_trains(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(PROSE)
    os.mkfifo(folder / "b.txt")  # skipped, never opened: no reader waits on it
    daemon.start()
    try:
        run = ctl(home, "start", "--end", "tiny", "--steps", "1", "--corpus", str(folder), timeout=30).stdout.strip()
        assert ctl(home, "wait", run, "--timeout", "180").returncode == 0
    finally:
        release(folder / "b.txt")
    assert "completed" in ctl(home, "status", run).stdout


def test_a_slow_start_check_holds_up_no_other_request(home: Path, daemon: Daemon, tmp_path: Path) -> None:
    folder = tmp_path / "many"  # 20,000 files: the start check sniffs each (about a second)
    folder.mkdir()
    for i in range(20_000):
        (folder / f"{i:05d}.txt").write_text("hello world\n")
    (folder / "zzz.bin").write_bytes(b"\0\0")  # sniffed last: the start is refused after the whole walk
    daemon.start()

    async def scenario() -> tuple[bool, str]:
        starter, asker = Connection(Layout(home), timeout_s=30), Connection(Layout(home), timeout_s=30)

        async def start() -> str:
            try:
                await starter.request(Start(config=RunConfig(end="tiny", steps=1, corpus=str(folder))))
            except RequestFailed as refused:
                return str(refused)
            return "started"

        try:
            started = asyncio.create_task(start())
            await asyncio.sleep(0.2)  # let the start reach tritterd first (a positive check follows)
            runs = await asker.request(Runs())
            assert runs.ok and runs.runs == []
            answered_first = not started.done()
            return answered_first, await started
        finally:
            await starter.close()
            await asker.close()

    answered_first, outcome = asyncio.run(scenario())
    assert answered_first, "`runs` waited for the start's data check"
    assert "mixes pre-tokenized" in outcome or "took longer than 4 s" in outcome, outcome
    assert "no runs yet" in ctl(home, "runs").stdout
