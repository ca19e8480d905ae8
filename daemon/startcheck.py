"""The start-time checks of a run's paths (``--corpus``, ``--tokenizer``), off tritterd's event loop.

Every check here touches the file system (``stat``, a sniff of the corpus, loading the tokenizer),
and a file system can be slow or hung (NFS) or a path can name a FIFO that blocks on open.  So:

- each path is ``os.stat``-checked before anything opens it: a FIFO, socket or device is refused
  in one line (``formats/pathkind.py``);
- the checks run in a daemon thread, so the event loop keeps answering other requests, and a
  thread stuck in a hung system call never holds up tritterd's exit;
- they get ``START_CHECK_TIMEOUT_S`` (60 s), less than a client's wait for a start's reply
  (``START_REPLY_TIMEOUT_S``, protocol/control.py): past it the start is refused ("… took longer than 60 s …") instead of
  answered after the client has given up and told its user the start failed, which would
  leave a run the user does not know about.
"""

from __future__ import annotations

import asyncio
import threading
from importlib import resources
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tritter.formats.datacheck import check_data
from tritter.formats.pathkind import special_path_problem
from tritter.protocol.config import RunConfig
from tritter.protocol.control import START_CHECK_TIMEOUT_S


T = TypeVar("T")


def path_problem(config: RunConfig) -> str | None:
    """One line saying what is wrong with the run's ``corpus``/``tokenizer``/``text_field``, or None.

    Blocking (stat and small reads); call it off the event loop, as ``check_start_paths`` does.
    Order: relative path, missing corpus, FIFO/socket/device (``os.stat``, before any open), then
    ``formats.datacheck.check_data`` (sniff, JSONL field, token ids, tokenizer load).
    """
    for label, value in (("--corpus", config.corpus), ("--tokenizer", config.tokenizer)):
        if value is None:
            continue
        path = Path(value)
        if not path.is_absolute():
            return f"{label} must be an absolute path on the daemon's machine, got {value!r}"
        if label == "--corpus" and not path.exists():
            return f"--corpus {value} does not exist on the daemon's machine"
        if problem := special_path_problem(path, label):
            return problem
    # the embedded tokenizer counts a small corpus's tokens when the run has none of its own
    embedded = Path(str(resources.files("tritter.daemon") / "assets" / "tokenizer.json"))
    return check_data(config.corpus, config.tokenizer, config.text_field, default_tokenizer=embedded)


async def in_daemon_thread(fn: Callable[[], T], timeout_s: float) -> T:
    """Run ``fn()`` in a new daemon thread and return its result, waiting at most ``timeout_s`` seconds.

    Unlike ``asyncio.to_thread`` (the loop's default executor, joined when ``asyncio.run`` ends),
    a daemon thread stuck in a system call that never returns cannot keep the process alive.
    Raises TimeoutError when ``fn`` has not returned in time (it keeps running, its result is
    dropped), and whatever ``fn`` raises.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if not future.done():  # the waiter may have timed out or been cancelled
            if ok:
                future.set_result(value)  # type: ignore[arg-type]
            else:
                future.set_exception(value)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result: object = fn()
            ok = True
        except BaseException as error:  # handed to the awaiting coroutine
            result, ok = error, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, name="tritterd-start-check", daemon=True).start()
    return await asyncio.wait_for(future, timeout_s)


async def check_start_paths(config: RunConfig, timeout_s: float = START_CHECK_TIMEOUT_S) -> str | None:
    """``path_problem(config)`` run off the event loop with a ``timeout_s`` second limit.

    Returns its line or None; when the checks take longer, a line saying so (the start is then
    refused, so a client that gave up waiting never gets a run it was told had failed).
    """
    if config.corpus is None and config.tokenizer is None:
        return None  # the embedded corpus and tokenizer: nothing to check on disk
    try:
        return await in_daemon_thread(lambda: path_problem(config), timeout_s)
    except (TimeoutError, asyncio.TimeoutError):
        what = " and ".join(f"{label} {value}" for label, value in
                            (("--corpus", config.corpus), ("--tokenizer", config.tokenizer)) if value)
        return (f"checking {what} took longer than {timeout_s:g} s (a slow or hung file system?); "
                "the run was not started")
