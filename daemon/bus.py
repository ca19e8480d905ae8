"""The event bus: a PUB socket for live events plus heartbeats that tell subscribers the head seq.

Frames (see protocol/bus.py): ``[kind, seq, msgpack event]`` and heartbeats ``[b"hb", head]``.
Subscribers compare the heartbeat's head with the last seq they
saw, so a lost tail is noticed within one heartbeat even when no new event follows
(the ZeroMQ Guide's Clone pattern).  PUB never blocks: a subscriber that falls past its
high-water mark loses messages, sees the gap, and catches up from the log instead of
slowing training down.
"""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from tritter.daemon.remote import ServerKeys, bind
from tritter.protocol import bus as frames
from tritter.protocol.bus import HEARTBEAT, seq_frame

PUB_HWM = 100_000


class Bus:
    """The event bus: PUB sockets (high-water mark ``PUB_HWM`` messages) on ``endpoints``, that never block;
    a heartbeat task (after ``start``) sends the head seq every ``HEARTBEAT_INTERVAL_S`` seconds.
    Raises zmq.ZMQError when a bind fails.
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: list[str]) -> None:
        # Plain (non-asyncio) sockets: PUB never blocks, and the asyncio wrapper's Future per
        # send costs about half of the publish time.
        self._ctx = zmq.Context.shadow(ctx.underlying)
        self._sockets: list[zmq.Socket] = []
        if endpoints:
            self._add(endpoints)
        self._head = 0
        self._heartbeat: asyncio.Task[None] | None = None

    def _add(self, endpoints: list[str], keys: ServerKeys | None = None) -> None:
        pub = self._ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        bind(pub, endpoints, keys)
        self._sockets.append(pub)

    def add_remote(self, endpoint: str, keys: ServerKeys) -> None:
        """Also publish on ``endpoint`` (tcp), as a CURVE server with ``keys``; zmq.ZMQError when it cannot bind."""
        self._add([endpoint], keys)

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The PUB sockets (local, then remote): for socket monitors (tritterd --metrics)."""
        return list(self._sockets)

    def start(self, head: int) -> None:
        """Start the heartbeat task, announcing ``head`` (the log's newest seq) until the next publish; needs a
        running loop."""
        self._head = head
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _send(self, parts: list[bytes]) -> None:
        for pub in self._sockets:
            try:
                for part in parts[:-1]:
                    pub.send(part, zmq.SNDMORE | zmq.NOBLOCK)
                pub.send(parts[-1], zmq.NOBLOCK)
            except zmq.Again:  # PUB drops rather than blocks; never let the bus stall the daemon
                pass

    def publish(self, kind: str, seq: int, payload: bytes) -> None:
        """Send ``[kind, seq (8 bytes), payload (msgpack event)]`` on every socket and make ``seq`` the heartbeat's
        head; drops, never blocks, on a full queue."""
        self._head = seq
        self._send([kind.encode(), seq_frame(seq), payload])

    async def _beat(self) -> None:
        while True:
            self._send([HEARTBEAT, seq_frame(self._head)])
            await asyncio.sleep(frames.HEARTBEAT_INTERVAL_S)

    def close(self) -> None:
        """Cancel the heartbeat and close the sockets (linger 0: queued messages are dropped)."""
        if self._heartbeat:
            self._heartbeat.cancel()
        for pub in self._sockets:
            pub.close(linger=0)
