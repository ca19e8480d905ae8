"""Shared fixtures: real tritterd processes on a private home, driven through the real CLIs."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- skips in CI
# Under CI (CI=true) the only legitimate skip is the absent GPU: any other skip (a missing test
# dependency, a missing tool, no right to mount) is turned into a failure, so a broken install
# cannot make CI green by skipping tests.  A GPU test says so in its reason (``requires_gpu``).
GPU_SKIP_REASON = "needs a CUDA GPU"
ALLOWED_CI_SKIPS = (GPU_SKIP_REASON,)


def in_ci() -> bool:
    """Whether this is a CI run: ``CI`` set to anything but empty/0/false (GitHub, GitLab, .ci/run)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def requires_gpu(func: Callable) -> Callable:
    """Mark a test that needs CUDA; the skip reason is the one CI accepts."""
    import torch

    return pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_SKIP_REASON)(func)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(allowed in reason for allowed in ALLOWED_CI_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which allows only {ALLOWED_CI_SKIPS}: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A module-level skip (importorskip, allow_module_level) is a collection skip: same rule."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_CI_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"module skipped in CI, which allows only {ALLOWED_CI_SKIPS}: {reason}"


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


class Daemon:
    """A tritterd subprocess on ``home``; stderr goes to ``home/tritterd.stderr``."""

    def __init__(self, home: Path, extra_args: list[str] | None = None) -> None:
        self.home = home
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = home / "tritterd.stderr"

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(
            [tool("tritterd"), "--home", str(self.home), *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # so a kill -9 test can take the whole process group
        )
        stderr.close()
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"tritterd exited with {self.process.returncode}:\n{self.stderr()}")
            if ctl(self.home, "runs", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"tritterd not ready after {timeout} s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        """kill -9 the daemon; its worker dies with it (PR_SET_PDEATHSIG)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 120.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def ctl(home: Path, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    if "--timeout" in args:  # `wait --timeout S` bounds itself; give it room to say so
        timeout = max(timeout, float(args[args.index("--timeout") + 1]) + 30)
    result = subprocess.run(
        [tool("tritterctl"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"tritterctl {' '.join(args)} -> {result.returncode}: {result.stderr.strip()}")
    return result


def events(home: Path, since: int = 1) -> list[dict]:
    out = ctl(home, "events", "--since", str(since), "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class EventStream:
    """``tritterctl events --follow --json`` in a subprocess, read line by line by a thread.

    A thread and a queue rather than select() on the pipe: lines that readline has already
    buffered are invisible to select, so a matching event could sit unread until the timeout.
    """

    def __init__(self, home: Path, since: int = 1) -> None:
        self.proc = subprocess.Popen(
            [tool("tritterctl"), "--home", str(home), "events", "--follow", "--json", "--since", str(since)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.seen: list[dict] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of stream

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next(self, timeout: float) -> dict | None:
        """The next event, or None when none came within ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if not line:
            raise AssertionError(f"event stream ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
        event = json.loads(line)
        self.seen.append(event)
        return event

    def until(self, predicate: Callable[[dict], bool], timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while (event := self.next(deadline - time.monotonic())) is not None:
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> object:
    """Call ``predicate`` every ``every`` s until it returns something truthy, and return that;
    AssertionError ``"WHAT: not within TIMEOUT s"`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def follow_until(home: Path, predicate: Callable[[dict], bool], timeout: float = 120.0, since: int = 1) -> dict:
    """Read the live event stream until an event matches; fail after ``timeout`` seconds."""
    stream = EventStream(home, since)
    try:
        return stream.until(predicate, timeout)
    finally:
        stream.close()


def read_metrics(home: Path, run_id: str) -> list[dict]:
    path = home / "runs" / run_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_metrics(home: Path, run_id: str, steps: int, timeout: float = 60.0) -> list[dict]:
    """The recorder is asynchronous: wait (bounded) until it has written ``steps`` lines."""
    deadline = time.monotonic() + timeout
    path = home / "runs" / run_id / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists():
            rows = read_metrics(home, run_id)
            if len(rows) >= steps:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"metrics.jsonl of {run_id} did not reach {steps} lines in {timeout} s")


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: ipc socket paths are limited to ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    yield path / "home"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(home: Path) -> Iterator[Daemon]:
    d = Daemon(home)
    yield d
    d.stop()
