"""(d) >= 10,000 malformed / random / wrong control messages while a run trains: every one is
answered with ok=False, the daemon stays up, and the run keeps stepping."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import msgspec
import zmq

import pytest

from conftest import Daemon, ctl, events
from reliability_helpers import TEST_TIMEOUT_S, LONG, Follower, report, seeded, start_run
from tritter.protocol.control import Ping, Reply, Status
from tritter.protocol.home import Layout
from tritter.protocol.wire import encode

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

MESSAGES = 50_000 if LONG else 10_000
RUN_OPS = ("stop", "pause", "resume", "checkpoint", "status")
ALL_OPS = ("ping", "start", "runs", *RUN_OPS, "catchup")
BAD_VALUES: list[object] = [
    12, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, math.nan, math.inf, -math.inf, True, b"\x00\xff",
    [1, 2], {"a": 1}, [], {}, "x" * 3000,
]


def random_scalar(rng: random.Random) -> object:
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if choice == 1:
        return rng.uniform(-1e308, 1e308)
    if choice == 2:
        return rng.randbytes(rng.randint(0, 16)).decode("latin-1")
    if choice == 3:
        return rng.randbytes(rng.randint(0, 16))
    if choice == 4:
        return rng.choice([None, True, False])
    if choice == 5:
        return rng.choice(BAD_VALUES)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 10)))


def random_shape(rng: random.Random, depth: int = 0) -> object:
    if depth > 3 or rng.random() < 0.4:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_shape(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    out: dict[object, object] = {}
    for _ in range(rng.randint(0, 5)):
        key = random_scalar(rng) if rng.random() < 0.2 else rng.choice(["op", "run", "config", "since", "limit", "x"])
        if isinstance(key, (list, dict)):
            key = str(key)
        out[key] = random_shape(rng, depth + 1)
    if isinstance(out.get("op"), str) and out["op"] in ALL_OPS:
        out["op"] = out["op"] + "?"  # random shapes must never spell a valid request by chance
    return out


def wrong_types(rng: random.Random) -> dict:
    op = rng.choice(ALL_OPS[1:])  # ping and runs take no fields: a wrong type needs a field
    if op == "runs":
        op = "stop"
    if op in RUN_OPS:
        value = rng.choice([v for v in BAD_VALUES if not isinstance(v, str)] + [None] * (op != "status"))
        return {"op": op, "run": value}
    if op == "catchup":
        field = rng.choice(["since", "limit"])
        return {"op": op, field: rng.choice(["7", 1.5, math.nan, None, [1], {"a": 2}, b"1", 2**64 - 1 + 0.5])}
    # start with a config of the wrong type or a field of the wrong type
    if rng.random() < 0.3:
        return {"op": "start", "config": rng.choice([None, 7, "tiny", [1], b"x"])}
    field, value = rng.choice([
        ("steps", "many"), ("steps", 1.5), ("seed", "s"), ("cuda", "yes"), ("hybrid", 3), ("start", 5),
        ("end", ["small"]), ("corpus", 9), ("nproc", "2"), ("checkpoint_every", [3]), ("name", 1),
    ])
    return {"op": "start", "config": {"steps": 2, field: value}}


def bad_numbers(rng: random.Random) -> dict:
    field, value = rng.choice([
        ("steps", -(2**63)), ("steps", 0), ("steps", -1), ("nproc", 2**63 - 1), ("nproc", 0),
        ("checkpoint_every", -(2**31)), ("checkpoint_every", 0), ("grad_ckpt_every", -(2**63)),
    ])
    return {"op": "start", "config": {"start": "tiny", "end": "tiny", field: value}}


def unknown_run(rng: random.Random) -> dict:
    ghost = "ghost-" + rng.randbytes(4).hex()
    return {"op": rng.choice(RUN_OPS), "run": ghost}


def message(rng: random.Random, kind: str) -> list[bytes]:
    if kind == "bytes":
        return [rng.randbytes(rng.randint(0, 256))]
    if kind == "multiframe":
        return [rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(2, 6))]
    maker = {"shape": random_shape, "types": wrong_types, "numbers": bad_numbers, "unknown": unknown_run}[kind]
    return [msgspec.msgpack.encode(maker(rng))]


KINDS = ("bytes", "shape", "types", "numbers", "multiframe", "unknown")


def test_fuzzed_control_messages_all_refused_while_training(daemon: Daemon, home: Path) -> None:
    test_began = time.monotonic()
    daemon.start()
    run_id = start_run(home, ("--start", "tiny", "--end", "tiny", "--steps", "100000", "--checkpoint-every", "100000"), "under-fuzz")
    follower = Follower(home)
    try:
        first = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "step", timeout=300)
    finally:
        follower.close()
    rng = seeded("fuzz")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(Layout(home).api_endpoint)
    counts = dict.fromkeys(KINDS, 0)
    began = time.time()
    sent = 0

    def fuzz_one() -> None:
        nonlocal sent
        kind = KINDS[sent % len(KINDS)]
        frames = message(rng, kind)
        sock.send_multipart(frames)
        try:
            reply_frames = sock.recv_multipart()
        except zmq.Again:
            raise AssertionError(f"no reply within 30 s to message {sent} ({kind}): {frames!r}") from None
        reply = msgspec.msgpack.decode(reply_frames[-1], type=Reply)
        assert reply.ok is False and reply.error, (kind, frames, reply)
        counts[kind] += 1
        sent += 1

    def current_step() -> int:
        sock.send(encode(Status(run=run_id)))
        reply = msgspec.msgpack.decode(sock.recv(), type=Reply)
        assert reply.ok and reply.runs[0].status == "running", reply
        return reply.runs[0].current_step

    try:
        for _ in range(MESSAGES):
            fuzz_one()
        # Keep the junk coming until the run has done a whole step under it (slow shared cores).
        deadline = time.monotonic() + 300
        while current_step() < first["step"] + 2 and time.monotonic() < deadline:
            for _ in range(300):
                fuzz_one()
        ended = time.time()
        sock.send(encode(Ping()))
        assert msgspec.msgpack.decode(sock.recv(), type=Reply).ok
    finally:
        sock.close()
        ctx.term()
    assert sent >= MESSAGES
    assert daemon.process is not None and daemon.process.poll() is None
    # The run kept training while the daemon was busy answering junk, and is still running.
    follower = Follower(home, since=first["seq"])
    try:
        later = follower.until(lambda e: e.get("run_id") == run_id and e["kind"] == "step" and e["ts"] > ended, timeout=300)
    finally:
        follower.close()
    mine = [e for e in events(home) if e.get("run_id") == run_id]
    during = [e for e in mine if e["kind"] == "step" and began <= e["ts"] <= ended]
    assert not [e for e in mine if e["kind"] == "run" and e["status"] != "started"], "the run was disturbed"
    assert [e["step"] for e in mine if e["kind"] == "step"] == list(range(1, later["step"] + 1))
    assert len(ctl(home, "runs").stdout.splitlines()) >= 1
    ctl(home, "stop", run_id)
    report("d_fuzz_control", messages=sent, by_kind=counts, fuzz_s=round(ended - began, 1),
           msgs_per_s=round(sent / (ended - began)), steps_during_fuzz=len(during),
           steps_total_seen=later["step"], duration_s=round(time.monotonic() - test_began, 1))
    assert during, "no training step completed while the fuzz ran"
