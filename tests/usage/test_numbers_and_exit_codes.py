"""Out-of-range numbers (every numeric flag, and every number in a request to the daemon) and
the one exit-status convention of every command (protocol/exitcodes.py, docs/operations.md):
0 ok, 1 ``wait``: the run will not complete, 2 any error with one line on stderr, 124 timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
import zmq

from conftest import Daemon, ctl, tool
from crafted import run_events, write_log
from tritter.protocol.control import Ping, Reply
from tritter.protocol.home import Layout
from tritter.protocol.wire import decode_as, encode

HUGE = "99999999999999999999999"


def run_tool(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stdout, err)
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "Error:" not in err.replace("error:", ""), err  # no exception names
    return err


# -- numbers: refused where they are typed --------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("events", "--since", HUGE),
    ("events", "--since", "-1"),
    ("start", "--seed", HUGE),
    ("start", "--seed", "-1"),
    ("start", "--nproc", "0"),
    ("start", "--nproc", HUGE),
    ("start", "--checkpoint-every", "0"),
    ("start", "--grad-ckpt-every", HUGE),
    ("wait", "RUN", "--timeout=nan"),  # one word: conftest's ctl() sizes its own timeout on "--timeout S"
    ("wait", "RUN", "--timeout=inf"),
    ("wait", "RUN", "--timeout=-1"),
    ("start", "--tokens", "1.5"),  # tokens are whole: 1.5k is fine, 1.5 is not
    ("start", "--corpus", ""),  # an empty path would mean the current folder
    ("start", "--tokenizer", " "),
    ("start", "--text-field", ""),
    ("start", "--sample-prompts", ""),
])
def test_tritterctl_numbers_out_of_range_are_one_line_exit_2(home: Path, args: tuple[str, ...]) -> None:
    err = assert_one_line_error(ctl(home, *args, check=False))
    assert "out of range" in err or "expected" in err or "not a whole number" in err, err


@pytest.mark.parametrize("command", [
    ("tritter-ckpt", "info", "x", "--threads", "0"),
    ("tritter-ckpt", "compress", "x", "--threads", HUGE),
    ("tritter-compress", "--keep-last", "-1"),
    ("tritter-compress", "--keyframe-every", "0"),
    ("tritter-upload", "--attempts", "0"),
    ("tritter-upload", "--backoff", "inf"),
    ("tritter-upload", "--request-timeout", "0"),
    ("tritterd", "--slots", HUGE),
    ("tritterd", "--slots", "0"),
    ("tritterd", "--stall-factor", "inf"),
    ("tritterd", "--stall-factor", "1e400"),
    ("tritterd", "--stall-factor", "1"),
    ("tritterd", "--stall-min-s", "inf"),
    ("tritterd", "--stall-min-s", "nan"),
    ("tritterd", "--home", ""),  # not the default home
    ("tritter-tui", "--home", ""),
    ("tritterctl", "--home", "", "runs"),
])
def test_sink_and_tool_numbers_out_of_range(command: tuple[str, ...], tmp_path: Path) -> None:
    if command[1] == "info":  # info has no --threads: argparse says so, also in one line
        command = ("tritter-ckpt", "compress", "x", "--threads", "0")
    if command[0] == "tritterd" and "--home" not in command:  # refused before it touches a home (none is created)
        command = (*command, "--home", str(tmp_path / "home"))
    err = assert_one_line_error(run_tool(*command))
    assert "out of range" in err or "expected" in err, err
    assert not (tmp_path / "home").exists()


def _request(home: Path, payload: bytes) -> Reply:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(Layout(home).api_endpoint)
        sock.send(payload)
        assert sock.poll(10_000), "tritterd did not answer"
        return decode_as(sock.recv_multipart()[-1], Reply)
    finally:
        sock.close()
        ctx.term()


OUT_OF_RANGE_REQUESTS = [
    {"op": "catchup", "since": 2**63},
    {"op": "catchup", "since": -5},
    {"op": "catchup", "since": 1, "limit": 0},
    {"op": "catchup", "since": 1, "limit": 2**60},
    {"op": "start", "config": {"start": "tiny", "end": "tiny", "steps": 2**62}},
    {"op": "start", "config": {"start": "tiny", "end": "tiny", "seed": 2**63}},
    {"op": "start", "config": {"start": "tiny", "end": "tiny", "checkpoint_every": 2**60}},
    {"op": "start", "config": {"start": "tiny", "end": "tiny", "grad_ckpt_every": 10**9}},
]


def test_daemon_answers_out_of_range_numbers_with_an_error(daemon: Daemon, home: Path) -> None:
    daemon.start()
    for request in OUT_OF_RANGE_REQUESTS:
        reply = _request(home, msgspec.msgpack.encode(request))
        assert not reply.ok and reply.error, (request, reply)
        assert "internal error" not in reply.error, reply.error
        assert _request(home, encode(Ping())).ok  # and it keeps serving
    assert ctl(home, "runs", "--json").stdout.strip() == "[]"  # nothing was started


# -- exit codes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ("tritterctl", "--no-such-flag"),
    ("tritterctl", "start", "--end", "huge"),
    ("tritterd", "--bind", "udp://nowhere"),
    ("tritterd", "--no-such-flag"),
    ("tritter-record", "--no-such-flag"),
    ("tritter-compress", "--no-such-flag"),
    ("tritter-upload", "--no-such-flag"),
    ("tritter-tensorboard", "--no-such-flag"),
    ("tritter-record", "--connect", "udp://nowhere"),
    ("tritter-ckpt", "verify"),
    ("tritter-ckpt", "info", "/nonexistent/file.safetensors"),
    ("tritter-tui", "--runs-dir", "/nonexistent"),
])
def test_every_error_is_one_line_and_exit_2(home: Path, command: tuple[str, ...]) -> None:
    name, *args = command
    if name != "tritter-ckpt" and name != "tritter-tui":
        args = ["--home", str(home), *args]
    assert_one_line_error(run_tool(name, *args))


def test_tritterctl_when_the_daemon_is_not_running_exits_2(home: Path) -> None:
    err = assert_one_line_error(ctl(home, "status", check=False))
    assert "not running" in err and "tritterd --home" in err


def test_ckpt_decompress_onto_an_existing_file_exits_2_like_every_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    raw = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(4, 4)}, str(raw))
    assert run_tool("tritter-ckpt", "compress", str(raw)).returncode == 0
    err = assert_one_line_error(run_tool("tritter-ckpt", "decompress", str(tmp_path / "a.safetensors.tzst")))
    assert "exists" in err and "--force" in err


def test_wait_exit_codes_follow_the_run(home: Path) -> None:
    write_log(home, [
        *run_events("20260101-000000-aaaa", "done", "completed"),
        *run_events("20260101-000001-bbbb", "broken", "failed", reason="worker exited with code 1"),
        *run_events("20260101-000002-cccc", "halted", "stopped"),
        *run_events("20260101-000003-dddd", "disk", "paused", reason="cannot write the step 4 checkpoint: No space left on device (ENOSPC)"),
    ])
    daemon = Daemon(home).start()
    try:
        assert ctl(home, "wait", "aaaa", check=False).returncode == 0
        failed = ctl(home, "wait", "bbbb", check=False)
        assert failed.returncode == 1 and "worker exited with code 1" in failed.stdout
        assert ctl(home, "wait", "cccc", check=False).returncode == 1
        paused = ctl(home, "wait", "dddd", check=False, timeout=30)  # paused itself: will not complete alone
        assert paused.returncode == 1 and "No space left on device" in paused.stdout, paused
        assert_one_line_error(ctl(home, "wait", "zzzz", check=False))
    finally:
        daemon.stop()


def test_a_client_started_with_the_daemon_waits_for_it(tmp_path: Path) -> None:
    """`tritterd --home H & tritterctl --home H runs`: the client waits while the daemon comes up
    (importing, replaying its log) instead of saying it is not running; twice, the second time
    over the socket file the first daemon left (a `kill -9`)."""
    home = tmp_path / "home"
    for _ in range(2):
        daemon = subprocess.Popen([tool("tritterd"), "--home", str(home), "--no-recorder"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            result = run_tool("tritterctl", "--home", str(home), "runs")
            assert result.returncode == 0 and "no runs yet" in result.stdout, result.stderr
        finally:
            daemon.kill()
            daemon.wait(timeout=30)
    assert Path(Layout(home).api_endpoint[len("ipc://"):]).exists()  # left behind by the kill
    late = run_tool("tritterctl", "--home", str(home), "runs")  # no daemon at all: says so, at once
    assert late.returncode == 2 and "not running" in late.stderr
