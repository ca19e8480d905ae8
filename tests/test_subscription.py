"""Subscription (Clone pattern) and Connection (Lazy Pirate) against a real EventLog + Bus.

The daemon here is test-local: the real log and bus, plus a tiny ROUTER that answers Catchup
and Ping the way tritterd does.  Everything runs on ipc sockets under tmp_path, with a short
heartbeat so losses and restarts are noticed quickly; no test sleeps blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

import tritter.protocol.bus as bus_frames
from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.subscription import Subscription
from tritter.daemon.bus import Bus
from tritter.daemon.eventlog import EventLog
from tritter.protocol.control import AnyRequest, Catchup, Ping, Reply, Status
from tritter.protocol.events import AnyEvent, RunEvent, StepEvent
from tritter.protocol.home import Layout
from tritter.protocol.wire import ProtocolError, decode_as, encode

HEARTBEAT_S = 0.1
# Generous bounds: each wait below ends on the thing it waits for; the bound only turns a hang
# (the behaviour broken) into a failure, so it must not bite on a loaded machine.
WAIT_S = 60.0
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bus reads the module constant on every beat; the subscription is told the same interval.
    monkeypatch.setattr(bus_frames, "HEARTBEAT_INTERVAL_S", HEARTBEAT_S)


def run(body: Callable[[zmq.asyncio.Context], Coroutine[Any, Any, None]]) -> None:
    """Run one test body with its own context, destroyed even when the body fails: a socket left
    open would make the context's termination hang the whole pytest process at exit."""

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        try:
            await body(ctx)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(main())


def step(n: int) -> StepEvent:
    return StepEvent(
        run_id="r1",
        step=n,
        loss=1.0 / n,
        gradient_norm=0.5,
        phase="full",
        was_predicted=False,
        prediction_error=None,
        step_time_ms=1.0,
        stage="tiny",
        lr=1e-3,
        tokens=n * 64,
        tokens_per_s=1000.0,
    )


class FakeDaemon:
    """The real EventLog and Bus, and a ROUTER that answers Catchup/Ping/Status like tritterd."""

    def __init__(self, home: Path) -> None:
        self.layout = Layout(home)
        self.catchups = 0
        self.running = False
        self._steps = 0

    async def __aenter__(self) -> FakeDaemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.running:
            await self.stop()

    async def start(self) -> None:
        self.log = EventLog(self.layout.log)  # a restart reopens the same log and continues it
        self.ctx = zmq.asyncio.Context()
        self.layout.sockets.mkdir(parents=True, exist_ok=True)
        self.bus = Bus(self.ctx, [self.layout.events_endpoint])
        self.bus.start(self.log.head)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.layout.api_endpoint)
        self.server = asyncio.create_task(self._serve())
        self.running = True

    async def stop(self) -> None:
        self.running = False
        self.server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.server
        self.bus.close()
        self.router.close(linger=0)
        self.ctx.destroy(linger=0)
        self.log.close()

    async def _serve(self) -> None:
        while True:
            ident, *_, payload = await self.router.recv_multipart()
            reply = self.answer(decode_as(payload, AnyRequest))  # type: ignore[arg-type]
            await self.router.send_multipart([ident, encode(reply)])

    def answer(self, request: AnyRequest) -> Reply:
        if isinstance(request, Catchup):
            self.catchups += 1
            events = [msgspec.Raw(p) for p in self.log.read_since(request.since, request.limit)]
            return Reply(ok=True, events=events, head=self.log.head)
        if isinstance(request, Ping):
            return Reply(ok=True, message="pong", head=self.log.head)
        return Reply(ok=False, error=f"no run matches {getattr(request, 'run', None)!r}")

    def emit(self, n: int, publish: bool = True) -> None:
        """Append n events to the log and publish them; ``publish=False``: the frames are lost."""
        with contextlib.nullcontext() if publish else self._frames_lost():
            for _ in range(n):
                self._steps += 1
                first = self._steps == 1
                event: AnyEvent = RunEvent(run_id="r1", status="started") if first else step(self._steps)
                payload = self.log.append(event)  # gives the event its seq
                self.bus.publish(event.kind, event.seq, payload)

    @contextlib.contextmanager
    def _frames_lost(self) -> Iterator[None]:
        # As past the HWM: Bus.publish runs (and records the head for its heartbeat), the frame vanishes.
        bus = self.bus
        bus._send = lambda parts: None  # type: ignore[method-assign]
        try:
            yield
        finally:
            del bus._send


class Collector:
    """Drains a Subscription in a task, so the test can act while it waits for events."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.states: list[str] = []
        self._tick = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def on_state(self, state: str) -> None:
        self.states.append(state)
        self._tick.set()

    def start(self, sub: Subscription) -> None:
        self.task = asyncio.create_task(self._drain(sub))
        self.task.add_done_callback(lambda _: self._tick.set())

    async def _drain(self, sub: Subscription) -> None:
        async for event in sub:
            self.seqs.append(event.seq)
            self._tick.set()

    async def until(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                assert self.task is not None
                if self.task.done():
                    self.task.result()  # re-raise what ended it
                    raise AssertionError(f"subscription ended early at {self.seqs[-1:]}")
                self._tick.clear()
                await self._tick.wait()

    async def upto(self, seq: int, timeout: float = WAIT_S) -> None:
        await self.until(lambda: bool(self.seqs) and self.seqs[-1] >= seq, timeout)


def subscribe(
    ctx: zmq.asyncio.Context, daemon: FakeDaemon, since: int = 1, heartbeat_s: float = HEARTBEAT_S
) -> tuple[Subscription, Collector]:
    collector = Collector()
    sub = Subscription(
        daemon.layout, since, ctx=ctx, on_state=collector.on_state, heartbeat_s=heartbeat_s, timeout_s=1.0
    )
    collector.start(sub)
    return sub, collector


def contiguous(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# -- Subscription ---------------------------------------------------------------------------------


def test_late_subscriber_gets_history_then_live(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(2500)  # more than one catch-up batch
            sub, got = subscribe(ctx, daemon)
            await got.upto(2500)
            await got.until(lambda: "live" in got.states)
            daemon.emit(100)
            await got.upto(2600)
            assert got.seqs == contiguous(1, 2600)
            assert sub.last_seq == 2600 and sub.head == 2600
            await sub.close()

    run(body)


def test_subscriber_since_n(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(30)
            sub, got = subscribe(ctx, daemon, since=11)
            await got.upto(30)
            daemon.emit(5)
            await got.upto(35)
            assert got.seqs == contiguous(11, 35)
            await sub.close()

    run(body)


def test_no_follow_stops_at_the_head_seen_at_start(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(40)
            sub = Subscription(daemon.layout, 5, ctx=ctx, follow=False, timeout_s=1.0)
            seqs = [event.seq async for event in sub]
            assert seqs == contiguous(5, 40)
            assert [e.seq async for e in Subscription(daemon.layout, 41, ctx=ctx, follow=False)] == []
            await sub.close()

    run(body)


def test_gap_is_filled_from_the_log(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(10)
            sub, got = subscribe(ctx, daemon)
            await got.upto(10)
            await got.until(lambda: "live" in got.states)
            catchups = daemon.catchups
            daemon.emit(5, publish=False)  # lost on the wire
            daemon.emit(5)  # seq 16 arrives after 10: a gap
            await got.upto(20)
            assert got.seqs == contiguous(1, 20)
            assert daemon.catchups > catchups
            await sub.close()

    run(body)


def test_tail_loss_is_seen_by_heartbeat(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(10)
            # The bus keeps beating every 0.1 s, so the subscriber never finds the daemon silent
            # and never reconnects: only the heartbeat's head can tell it about the lost tail.
            # Without that it would wait forever (the bounded wait fails); with a reconnect
            # instead, states would show "disconnected".
            sub, got = subscribe(ctx, daemon, heartbeat_s=2.0)
            await got.until(lambda: "live" in got.states)
            daemon.emit(3, publish=False)  # lost, and nothing follows: only the heartbeat tells
            await got.upto(13)
            assert got.seqs == contiguous(1, 13)
            assert got.states == ["live"]
            await sub.close()

    run(body)


def test_daemon_restart_leaves_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(20)
            sub, got = subscribe(ctx, daemon)
            await got.upto(20)
            await got.until(lambda: "live" in got.states)
            daemon.emit(5, publish=False)  # appended but never published before the "crash"
            await daemon.stop()  # the socket files stay behind, as after a crash
            await got.until(lambda: "disconnected" in got.states)
            await daemon.start()  # same endpoints, same log: continues at seq 26
            daemon.emit(10)
            await got.upto(35)
            await got.until(lambda: got.states[-1] == "live")
            daemon.emit(5)
            await got.upto(40)
            assert got.seqs == contiguous(1, 40)
            assert got.states[0] == "live" and "disconnected" in got.states and got.states[-1] == "live"
            await sub.close()

    run(body)


def test_undecodable_live_event_raises_protocol_error(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            daemon.emit(3)
            sub, got = subscribe(ctx, daemon)
            await got.until(lambda: "live" in got.states)
            daemon.bus.publish("step", 4, encode({"kind": "step", "seq": 4, "v": 1, "loss": "NaN?"}))
            with pytest.raises(ProtocolError, match="malformed step event seq 4"):
                await got.until(lambda: False)
            assert got.seqs == contiguous(1, 3)
            await sub.close()

    run(body)


def test_close_ends_a_waiting_iterator(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            sub, got = subscribe(ctx, daemon)
            await got.until(lambda: "live" in got.states)
            await sub.close()
            assert got.task is not None
            await asyncio.wait_for(got.task, WAIT_S)  # ends cleanly, not cancelled

    run(body)


# -- Connection -------------------------------------------------------------------------------------


def test_missing_socket_fails_at_once(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        # "At once" = without waiting for the request timeout, which is an hour here: a client
        # that waited for it would run into the (much shorter) bound and fail.
        conn = Connection(Layout(tmp_path / "h"), timeout_s=3600.0, ctx=ctx)
        with pytest.raises(DaemonUnavailable) as raised:
            await asyncio.wait_for(conn.request(Ping()), WAIT_S)
        message = str(raised.value)
        assert "not running" in message and "api.ipc" in message
        assert f"start it with: tritterd --home {tmp_path / 'h'}" in message
        assert "\n" not in message
        await conn.close()

    run(body)


def test_stale_socket_file_fails_at_once(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            conn = Connection(daemon.layout, timeout_s=5.0, ctx=ctx)
            assert (await conn.request(Ping())).message == "pong"
        # the daemon is gone; libzmq left its ipc file behind, as after a crash
        assert Path(daemon.layout.api_endpoint[len("ipc://") :]).exists()
        with pytest.raises(DaemonUnavailable):
            await conn.request(Ping())  # the old link: no answer within the timeout
        for client in (conn, Connection(daemon.layout, timeout_s=3600.0, ctx=ctx)):
            with pytest.raises(DaemonUnavailable, match="stale socket"):
                # refused at once: not after the (hour-long) request timeout
                await asyncio.wait_for(client.request(Ping()), WAIT_S)
            await client.close()

    run(body)


def test_timeout_when_nothing_answers(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        layout = Layout(tmp_path / "h")
        layout.sockets.mkdir(parents=True)
        mute = ctx.socket(zmq.ROUTER)
        mute.bind(layout.api_endpoint)
        conn = Connection(layout, timeout_s=0.3, ctx=ctx)
        started = time.monotonic()
        with pytest.raises(DaemonUnavailable, match=r"did not answer within 0\.3 s"):
            await asyncio.wait_for(conn.request(Ping()), WAIT_S)  # gives up by itself
        assert time.monotonic() - started >= 0.3  # a timer never fires early: not before its timeout
        await conn.close()
        mute.close(linger=0)

    run(body)


def test_request_failed_carries_the_daemon_error(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        async with FakeDaemon(tmp_path / "h") as daemon:
            conn = Connection(daemon.layout, timeout_s=30.0, ctx=ctx)
            with pytest.raises(RequestFailed, match="no run matches 'nope'"):
                await conn.request(Status(run="nope"))
            await conn.close()

    run(body)


def test_stale_reply_is_never_matched_to_a_later_request(tmp_path: Path) -> None:
    async def body(ctx: zmq.asyncio.Context) -> None:
        layout = Layout(tmp_path / "h")
        layout.sockets.mkdir(parents=True)
        router = ctx.socket(zmq.ROUTER)
        router.bind(layout.api_endpoint)
        conn = Connection(layout, timeout_s=0.3, ctx=ctx)

        first = asyncio.create_task(conn.request(Status(run="first")))
        ident1, payload1 = await asyncio.wait_for(router.recv_multipart(), WAIT_S)
        with pytest.raises(DaemonUnavailable):
            await first  # we hold its answer back past the timeout

        second = asyncio.create_task(conn.request(Status(run="second")))
        ident2, payload2 = await asyncio.wait_for(router.recv_multipart(), WAIT_S)
        assert ident1 != ident2  # a fresh socket: the late answer has nowhere to go
        assert [decode_as(p, Status).run for p in (payload1, payload2)] == ["first", "second"]
        await router.send_multipart([ident1, encode(Reply(ok=True, message="first"))])
        await router.send_multipart([ident2, encode(Reply(ok=True, message="second"))])
        assert (await asyncio.wait_for(second, WAIT_S)).message == "second"

        await conn.close()
        router.close(linger=0)

    run(body)
