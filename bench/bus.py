"""Benchmark the event bus: one publisher process (the real ``Bus``) to one subscriber process over ipc.

Measured in one run:

* latency: events paced at ``--rate`` (10k/s by default); each ``StepEvent`` carries its send time
  (``time.monotonic()``, system-wide on Linux) in ``ts``; the subscriber decodes every event as a
  client does and records receive - send.
* throughput: events published flat out; the subscriber must receive all of them;
  events/s = events / (last receive - first send).
* slow subscriber: publisher rate with a subscriber that has stopped reading vs with none.  PUB never
  waits for it: the stuck subscriber keeps about its HWM worth of events (``stuck_subscriber_kept``)
  and the rest are dropped; the ratio falls below 1 only by the cost of queueing frames into its
  pipe instead of discarding them at once.

Usage: ``python bench/bus.py [--quick] [--json]``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import multiprocessing.synchronize as mps
import queue
import shutil
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

import tritter.protocol.bus as bus_frames
from tritter.clients.subscription import SUB_RCVHWM, read_message
from tritter.daemon.bus import Bus
from tritter.protocol.bus import HEARTBEAT
from tritter.protocol.events import StepEvent
from tritter.protocol.wire import decode_event, encode

HEARTBEAT_S = 0.05  # short, so the subscriber learns a phase's head (its end) quickly
WAIT_S = 60.0  # nothing here should take this long; a hung phase fails instead of hanging
TARGET_EVENTS_PER_S = 50_000
TARGET_P99_MS = 5.0


@dataclass(frozen=True)
class Plan:
    rate: int  # paced rate for the latency phase, events/s
    latency_events: int
    throughput_events: int
    slow_events: int  # per slow-subscriber measurement
    slow_reps: int
    main: str  # endpoints
    stuck: str
    nobody: str


@dataclass
class Signals:
    sub_ready: mps.Event = field(default_factory=mp.get_context("spawn").Event)
    latency_done: mps.Event = field(default_factory=mp.get_context("spawn").Event)
    throughput_done: mps.Event = field(default_factory=mp.get_context("spawn").Event)
    stuck_ready: mps.Event = field(default_factory=mp.get_context("spawn").Event)


def make_event(seq: int) -> StepEvent:
    return StepEvent(
        seq=seq,
        run_id="bench",
        step=seq,
        loss=2.5,
        gradient_norm=0.7,
        phase="full",
        was_predicted=False,
        prediction_error=None,
        step_time_ms=12.5,
        stage="tiny",
        lr=3e-4,
        tokens=seq * 4096,
        tokens_per_s=250_000.0,
    )


def publish(bus: Bus, seq: int) -> None:
    event = make_event(seq)
    event.ts = time.monotonic()  # the send time, read as late as possible
    bus.publish("step", seq, encode(event))


# -- publisher process ---------------------------------------------------------------------------


async def wait_signal(event: mps.Event, what: str) -> None:
    # In a thread, so the bus keeps beating meanwhile.
    if not await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT_S):
        raise TimeoutError(f"publisher: no {what} within {WAIT_S:g} s")


async def paced(bus: Bus, first: int, count: int, rate: int) -> None:
    start = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            publish(bus, first + sent)
            sent += 1
        await asyncio.sleep(0.0005)  # the loop wakes about every ms: bursts of ~rate/1000


def flat_out(bus: Bus, first: int, count: int) -> tuple[float, float]:
    """Publish as fast as possible; return (events/s, longest 1000-event chunk in ms)."""
    start = chunk_start = time.monotonic()
    worst = 0.0
    for i in range(count):
        publish(bus, first + i)
        if i % 1000 == 999:
            now = time.monotonic()
            worst = max(worst, now - chunk_start)
            chunk_start = now
    return count / (time.monotonic() - start), worst * 1000


async def publisher_main(plan: Plan, signals: Signals, results: mp.Queue[Any]) -> None:
    bus_frames.HEARTBEAT_INTERVAL_S = HEARTBEAT_S
    ctx = zmq.asyncio.Context()
    endpoints = {"main": plan.main, "stuck": plan.stuck, "nobody": plan.nobody}
    buses = {name: Bus(ctx, [endpoint]) for name, endpoint in endpoints.items()}
    for bus in buses.values():
        bus.start(0)
    main = buses["main"]
    await wait_signal(signals.sub_ready, "subscriber")
    await paced(main, 1, plan.latency_events, plan.rate)
    await wait_signal(signals.latency_done, "end of the latency phase")
    cpu = time.process_time()  # all threads of this process, zmq's I/O thread included
    publish_rate, _ = flat_out(main, plan.latency_events + 1, plan.throughput_events)
    cpu_per_event = (time.process_time() - cpu) / plan.throughput_events
    await wait_signal(signals.throughput_done, "end of the throughput phase")
    await wait_signal(signals.stuck_ready, "stuck subscriber")
    slow = measure_slow(buses["nobody"], buses["stuck"], plan)
    results.put(("pub", {"publish_only_events_per_s": publish_rate, "cpu_per_event": cpu_per_event, **slow}))
    for bus in buses.values():
        bus.close()
    ctx.destroy(linger=0)


def measure_slow(nobody: Bus, stuck: Bus, plan: Plan) -> dict[str, float]:
    """Best of ``slow_reps`` flat-out runs each, interleaved so drift hits both alike."""
    best = {"nobody": 0.0, "stuck": 0.0}
    stall = 0.0
    for rep in range(plan.slow_reps):
        for name, bus in (("nobody", nobody), ("stuck", stuck)):
            rate, worst = flat_out(bus, rep * plan.slow_events + 1, plan.slow_events)
            best[name] = max(best[name], rate)
            stall = max(stall, worst)
    return {"slow_nobody": best["nobody"], "slow_stuck": best["stuck"], "slow_worst_chunk_ms": stall}


def run_publisher(plan: Plan, signals: Signals, results: mp.Queue[Any]) -> None:
    asyncio.run(publisher_main(plan, signals, results))


# -- subscriber process ----------------------------------------------------------------------------


@dataclass
class Phase:
    end: int  # last seq of the phase
    received: int = 0
    first_send: float = 0.0
    last_recv: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    cpu: float = 0.0  # process CPU seconds spent in the phase


async def receive(sock: zmq.asyncio.Socket, plain: zmq.Socket[bytes]) -> list[bytes]:
    """As tritter.clients.subscription does: read queued messages plainly, use asyncio only to wait."""
    while True:
        frames = read_message(plain)
        if frames is not None:
            return frames
        if not await sock.poll(int(WAIT_S * 1000), zmq.POLLIN):
            raise TimeoutError(f"subscriber: nothing heard for {WAIT_S:g} s")


async def run_phase(sock: zmq.asyncio.Socket, phase: Phase, keep_latency: bool) -> None:
    """Until seq ``phase.end`` arrives, or a heartbeat says the publisher is past it (frames lost)."""
    plain = zmq.Socket.shadow(sock.underlying)
    while True:
        frames = await receive(sock, plain)
        if frames[0] == HEARTBEAT:
            if int.from_bytes(frames[1], "big") >= phase.end:
                return
            continue
        event = decode_event(frames[2])  # as a client does
        now = time.monotonic()
        if not phase.received:
            phase.first_send = event.ts
        phase.received += 1
        phase.last_recv = now
        if keep_latency:
            phase.latencies.append(now - event.ts)
        if event.seq >= phase.end:
            return


async def subscriber_main(plan: Plan, signals: Signals, results: mp.Queue[Any]) -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(plan.main)
    if not await sock.poll(int(WAIT_S * 1000), zmq.POLLIN):
        raise TimeoutError("subscriber: the publisher never answered")
    await sock.recv_multipart()  # the first heartbeat: our subscription has reached the publisher
    signals.sub_ready.set()
    latency = Phase(end=plan.latency_events)
    await run_phase(sock, latency, keep_latency=True)
    signals.latency_done.set()
    throughput = Phase(end=plan.latency_events + plan.throughput_events)
    cpu = time.process_time()  # CPU, not wall time: what receiving costs regardless of machine load
    await run_phase(sock, throughput, keep_latency=False)
    throughput.cpu = time.process_time() - cpu
    signals.throughput_done.set()
    results.put(("sub", {"latency": summarize_latency(latency), "throughput": summarize_throughput(throughput)}))
    sock.close(linger=0)
    ctx.destroy(linger=0)


def summarize_latency(phase: Phase) -> dict[str, float]:
    ms = sorted(x * 1000 for x in phase.latencies)
    if not ms:
        return {"received": 0}
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {"received": len(ms), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ms[-1]}


def summarize_throughput(phase: Phase) -> dict[str, float]:
    span = max(phase.last_recv - phase.first_send, 1e-9)
    cpu_per_event = phase.cpu / max(phase.received, 1)
    return {"received": phase.received, "events_per_s": phase.received / span, "cpu_per_event": cpu_per_event}


def run_subscriber(plan: Plan, signals: Signals, results: mp.Queue[Any]) -> None:
    asyncio.run(subscriber_main(plan, signals, results))


# -- orchestration ---------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace, sockets: Path) -> Plan:
    seconds = 2 if args.quick else 10
    return Plan(
        rate=args.rate,
        latency_events=args.rate * seconds,
        throughput_events=150_000 if args.quick else 1_000_000,
        slow_events=50_000 if args.quick else 500_000,
        slow_reps=2 if args.quick else 3,
        main=f"ipc://{sockets}/main.ipc",
        stuck=f"ipc://{sockets}/stuck.ipc",
        nobody=f"ipc://{sockets}/nobody.ipc",
    )


def stuck_subscriber(endpoint: str, signals: Signals) -> zmq.Socket[bytes]:
    """A subscriber that reads one heartbeat (so its subscription is in place) and then never again."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    if not sock.poll(int(WAIT_S * 1000)):
        raise TimeoutError("stuck subscriber never heard the publisher")
    sock.recv_multipart()
    signals.stuck_ready.set()
    return sock


def run(plan: Plan) -> dict[str, Any]:
    spawn = mp.get_context("spawn")
    signals = Signals()
    results: mp.Queue[Any] = spawn.Queue()
    procs = [
        spawn.Process(target=run_subscriber, args=(plan, signals, results), name="bench-sub"),
        spawn.Process(target=run_publisher, args=(plan, signals, results), name="bench-pub"),
    ]
    for proc in procs:
        proc.start()
    stuck = stuck_subscriber(plan.stuck, signals)
    try:
        got = collect(results, procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        kept = drain_events(stuck)
        stuck.close(linger=0)
    return report(plan, got["pub"], got["sub"], kept)


def collect(results: mp.Queue[Any], procs: list[mp.process.BaseProcess]) -> dict[str, Any]:
    """Both processes' results; fail as soon as one of them dies instead of waiting out WAIT_S."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + 3 * WAIT_S
    while len(got) < 2:
        try:
            who, data = results.get(timeout=0.5)
            got[who] = data
        except queue.Empty:
            dead = [f"{p.name} exited with {p.exitcode}" for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"bench failed: {'; '.join(dead) or 'timed out'} (results from {sorted(got)})")
    return got


def drain_events(sock: zmq.Socket[bytes]) -> int:
    """How many events a subscriber that stopped reading still has queued (the rest were dropped)."""
    kept = 0
    while (frames := read_message(sock)) is not None:
        kept += frames[0] != HEARTBEAT
    return kept


def report(plan: Plan, pub: dict[str, float], sub: dict[str, Any], stuck_kept: int) -> dict[str, Any]:
    lat, thr = sub["latency"], sub["throughput"]
    all_received = thr["received"] == plan.throughput_events
    result = {
        "bench": "bus",
        "bus": "tritter.daemon.bus.Bus",
        "transport": "ipc",
        "events_per_s": round(thr["events_per_s"]),
        "events_per_s_mode": f"flat out, {plan.throughput_events} events, first send to last receive",
        "throughput_all_received": all_received,
        "throughput_lost": plan.throughput_events - thr["received"],
        "publish_only_events_per_s": round(pub["publish_only_events_per_s"]),
        # CPU per event in the throughput phase (all threads of each process, zmq's included).
        "cpu_us_per_event": {
            "publisher": round(pub["cpu_per_event"] * 1e6, 2),
            "subscriber": round(thr["cpu_per_event"] * 1e6, 2),
        },
        "p50_ms": round(lat.get("p50_ms", float("nan")), 3),
        "p99_ms": round(lat.get("p99_ms", float("nan")), 3),
        "max_ms": round(lat.get("max_ms", float("nan")), 3),
        "latency_mode": (
            f"paced at {plan.rate}/s (a burst each ms), {plan.latency_events} events, publish to decoded in subscriber"
        ),
        "latency_lost": plan.latency_events - lat["received"],
        "slow_subscriber": {
            "publish_per_s_no_subscriber": round(pub["slow_nobody"]),
            "publish_per_s_stuck_subscriber": round(pub["slow_stuck"]),
            "ratio": round(pub["slow_stuck"] / pub["slow_nobody"], 3),
            "worst_1000_publishes_ms": round(pub["slow_worst_chunk_ms"], 2),
            "events": plan.slow_events * plan.slow_reps,
            "stuck_subscriber_kept": stuck_kept,
        },
        "targets": {"events_per_s": TARGET_EVENTS_PER_S, "p99_ms": TARGET_P99_MS},
    }
    result["ok"] = bool(
        all_received
        and result["latency_lost"] == 0
        and result["events_per_s"] >= TARGET_EVENTS_PER_S
        and result["p99_ms"] < TARGET_P99_MS
    )
    return result


def print_human(result: dict[str, Any]) -> None:
    slow = result["slow_subscriber"]
    print(
        f"throughput : {result['events_per_s']:>10,} events/s  "
        f"({result['events_per_s_mode']}; lost {result['throughput_lost']})"
    )
    cpu = result["cpu_us_per_event"]
    print(f"publish    : {result['publish_only_events_per_s']:>10,} events/s  (publisher side alone)")
    print(f"cpu/event  : publisher {cpu['publisher']} us, subscriber {cpu['subscriber']} us (all threads)")
    print(
        f"latency    : p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms  "
        f"({result['latency_mode']})"
    )
    print(
        f"slow sub   : {slow['publish_per_s_stuck_subscriber']:,}/s with a stuck subscriber vs "
        f"{slow['publish_per_s_no_subscriber']:,}/s with none (ratio {slow['ratio']}); "
        f"worst 1000 publishes took {slow['worst_1000_publishes_ms']} ms; the stuck subscriber kept "
        f"{slow['stuck_subscriber_kept']:,} of {slow['events']:,} events, the rest were dropped"
    )
    verdict = "OK" if result["ok"] else "MISSED"
    print(f"targets    : >= {TARGET_EVENTS_PER_S:,} events/s, p99 < {TARGET_P99_MS} ms -> {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under ~20 s)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    parser.add_argument("--rate", type=int, default=10_000, help="paced rate of the latency phase (events/s)")
    args = parser.parse_args(argv)
    sockets = Path(tempfile.mkdtemp(prefix="tritter-bench-"))
    try:
        result = run(make_plan(args, sockets))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    if not args.json:
        print_human(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
