"""Every event from a given seq, in order, exactly once, then the live stream (the Clone pattern).

The SUB socket is connected *before* catching up, so an event published while we read the log
is queued rather than lost.  Live frames then fill in: a seq we already have is dropped, a seq
that skips ahead (or a heartbeat announcing a head we have not seen) means frames were lost, and
we catch up from the log again.  When the daemon goes quiet or away, we say "disconnected" and
keep retrying (capped backoff) until it is back, then continue from the last seq we yielded:
the daemon never reuses a seq, so a restart leaves no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import msgspec
import zmq
import zmq.asyncio

from tritter.clients.connection import Connection, DaemonUnavailable
from tritter.clients.target import Target
from tritter.protocol.bus import HEARTBEAT, HEARTBEAT_INTERVAL_S, frame_seq
from tritter.protocol.control import CATCHUP_BATCH, Catchup
from tritter.protocol.events import AnyEvent
from tritter.protocol.home import Layout
from tritter.protocol.wire import ProtocolError, decode_event

SILENCE_BEATS = 3  # this many heartbeat intervals with nothing heard = the daemon is gone
SUB_RCVHWM = 200_000  # room for the live stream while a long catch-up runs; overflow is caught up too
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 2.0

LIVE = "live"
DISCONNECTED = "disconnected"


class _Silence(Exception):
    """Nothing (no event, no heartbeat) heard for SILENCE_BEATS heartbeat intervals."""


class _Closed(Exception):
    """close() was called while the iterator was waiting."""


def _frame_seq(frames: list[bytes], index: int) -> int:
    if len(frames) <= index or len(frames[index]) != 8:
        raise ProtocolError(
            f"malformed bus message ({len(frames)} frames); is this a tritterd events socket?"
        )
    return frame_seq(frames[index])


class Subscription:
    """Every event from `since`, in seq order, exactly once, then the live stream (Clone pattern).

    ``follow=False`` stops once caught up with the head seen at start, and raises
    DaemonUnavailable instead of waiting for a daemon that is not there.
    ``on_state`` is called with "live" / "disconnected" on each change.
    """

    def __init__(
        self,
        target: Layout | Target,
        since: int = 1,
        *,
        ctx: zmq.asyncio.Context | None = None,
        follow: bool = True,
        on_state: Callable[[str], None] | None = None,
        heartbeat_s: float = HEARTBEAT_INTERVAL_S,
        timeout_s: float = 5.0,
    ) -> None:
        self.last_seq = max(since, 1) - 1  # last seq yielded
        self.head = 0  # newest seq the daemon reported
        self.follow = follow
        self.state: str | None = None
        self._on_state = on_state
        self._silence_ms = max(1, int(SILENCE_BEATS * heartbeat_s * 1000))
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._conn = Connection(target, timeout_s, self._ctx)
        self._sub: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None  # a plain view of _sub, for the fast path
        self._stop_at: int | None = None  # follow=False: the head seen at start
        self._gen: AsyncGenerator[AnyEvent, None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def close(self) -> None:
        """Stop: close the SUB socket and the control connection, and end the event iterator (iterating after this
        just ends)."""
        self._closed = True
        self._drop_sub()  # wakes a waiting iterator (its recv is cancelled), which then ends
        await self._conn.close()
        gen = self._gen  # kept: iterating after close() just ends
        if gen is not None:
            try:
                await gen.aclose()
            except RuntimeError:  # it is running in another task: it ends on its own (see _run)
                pass

    # -- the loop -----------------------------------------------------------------------------
    async def _run(self) -> AsyncGenerator[AnyEvent, None]:
        if self._closed:
            return
        try:
            source = self._follow() if self.follow else self._catch_up()
            async with contextlib.aclosing(source):
                async for event in source:
                    yield event
        except _Closed:
            return
        except asyncio.CancelledError:
            if self._closed and not _cancelling():  # our own close() cancelled a socket wait
                return
            raise
        finally:
            self._drop_sub()
            await self._conn.close()

    async def _follow(self) -> AsyncGenerator[AnyEvent, None]:
        backoff = BACKOFF_MIN_S
        while not self._closed:
            try:
                self._ensure_sub()  # before the catch-up, so nothing published meanwhile is lost
                async for event in self._catch_up():
                    yield event
                self._set_state(LIVE)
                backoff = BACKOFF_MIN_S
                async for event in self._live():
                    yield event
            except (DaemonUnavailable, _Silence):
                self._set_state(DISCONNECTED)
                # Start clean: a half-open link (tcp) never recovers by itself, and a fresh
                # request socket notices a dead daemon at once instead of after its timeout.
                self._drop_sub()
                await self._conn.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    # -- catching up from the log ---------------------------------------------------------------
    async def _catch_up(self) -> AsyncGenerator[AnyEvent, None]:
        """Ask for batches from last_seq + 1 until we hold the daemon's head (or the stop point)."""
        while True:
            reply = await self._conn.request(Catchup(since=self.last_seq + 1, limit=CATCHUP_BATCH))
            self.head = reply.head
            if not self.follow and self._stop_at is None:
                self._stop_at = reply.head
            target = reply.head if self._stop_at is None else self._stop_at
            for raw in reply.events:
                if self.last_seq >= target:
                    return
                event = self._from_log(raw)
                if event is not None:
                    yield event
            if self.last_seq >= target:
                return
            if not reply.events:  # would loop forever: the daemon broke its promise
                raise ProtocolError(
                    f"tritterd reported head {reply.head} but sent no events from seq {self.last_seq + 1}"
                )

    def _from_log(self, raw: msgspec.Raw) -> AnyEvent | None:
        event = decode_event(raw)  # type: ignore[arg-type]  # Raw is a buffer
        if event.seq <= self.last_seq:
            return None
        if event.seq != self.last_seq + 1:
            raise ProtocolError(f"catch-up from tritterd jumped from seq {self.last_seq} to {event.seq}")
        self.last_seq = event.seq
        return event

    # -- the live stream ------------------------------------------------------------------------
    async def _live(self) -> AsyncGenerator[AnyEvent, None]:
        """Yield live events in order; return as soon as a catch-up is needed (a gap)."""
        while True:
            frames = await self._recv()
            if frames[0] == HEARTBEAT:
                head = _frame_seq(frames, 1)
                self.head = max(self.head, head)
                if head > self.last_seq:
                    return  # the tail was lost and no later event told us
                continue
            seq = _frame_seq(frames, 1)
            if seq <= self.last_seq:
                continue  # already yielded (from the log, or a duplicate)
            if seq > self.last_seq + 1:
                return  # frames were dropped (HWM, reconnect): fill the gap from the log
            yield self._from_live(frames, seq)

    def _from_live(self, frames: list[bytes], seq: int) -> AnyEvent:
        if len(frames) != 3:
            raise ProtocolError(f"malformed bus message for seq {seq} ({len(frames)} frames, expected 3)")
        event = decode_event(frames[2])
        if event.seq != seq:
            raise ProtocolError(f"bus frame says seq {seq} but the event inside is seq {event.seq}")
        self.last_seq = seq
        self.head = max(self.head, seq)
        return event

    async def _recv(self) -> list[bytes]:
        """The next bus message; _Silence when nothing at all is heard for SILENCE_BEATS beats."""
        while True:
            if self._closed or self._sub is None or self._sync is None:
                raise _Closed  # never touch the shadow socket once its socket is closed
            frames = read_message(self._sync)
            if frames is not None:
                return frames
            if not await self._sub.poll(self._silence_ms, zmq.POLLIN):
                raise _Silence

    # -- sockets ---------------------------------------------------------------------------------
    def _ensure_sub(self) -> None:
        if self._sub is not None:
            return
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._conn.connect_socket(sub, self._conn.events_endpoint)
        self._sub = sub
        # Queued messages are read through a plain (blocking-API) view of the same socket:
        # several times cheaper per message than the asyncio wrappers, which we use only to wait.
        self._sync = zmq.Socket.shadow(sub.underlying)

    def _drop_sub(self) -> None:
        if self._sub is not None:
            self._sync = None
            self._sub.close(linger=0)
            self._sub = None


def read_message(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """One queued message from a plain socket, None when none is queued (never blocks).

    ``Frame.more`` says whether a part follows without a getsockopt(RCVMORE) per part, which
    makes this about twice as fast as ``recv_multipart``; the parts of one message always
    arrive together, so NOBLOCK never splits a message.
    """
    try:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def _cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0
