"""The event bus: a PUB socket for live events plus heartbeats that tell subscribers the head seq.

Frames on the PUB socket: ``[kind, seq (8 bytes, big-endian), msgpack event]``; a heartbeat
is ``[b"hb", head seq]``.  Subscribers compare the heartbeat's head with the last seq they
saw, so a lost tail is noticed within one heartbeat even when no new event follows
(the ZeroMQ Guide's Clone pattern).  PUB never blocks: a subscriber that falls past its
high-water mark loses messages, sees the gap, and catches up from the log instead of
slowing training down.
"""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

HEARTBEAT = b"hb"
HEARTBEAT_INTERVAL_S = 1.0
PUB_HWM = 100_000


def seq_frame(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class Bus:
    def __init__(self, ctx: zmq.asyncio.Context, endpoints: list[str]) -> None:
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        self._pub.setsockopt(zmq.LINGER, 0)
        for endpoint in endpoints:
            self._pub.bind(endpoint)
        self._head = 0
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def socket(self) -> zmq.asyncio.Socket:
        return self._pub

    def start(self, head: int) -> None:
        self._head = head
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def publish(self, kind: str, seq: int, payload: bytes) -> None:
        self._head = seq
        try:
            self._pub.send_multipart([kind.encode(), seq_frame(seq), payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB does not block in practice; never let the bus stall the daemon
            pass

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(zmq.Again):
                self._pub.send_multipart([HEARTBEAT, seq_frame(self._head)], flags=zmq.NOBLOCK)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    def close(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
        self._pub.close(linger=0)
