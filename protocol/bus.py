"""The bus's frame layout, shared by the daemon's publisher and every subscriber.

Live events: ``[kind, seq (8 bytes, big-endian), msgpack event]``.
Heartbeat:   ``[b"hb", head seq (8 bytes, big-endian)]`` every ``HEARTBEAT_INTERVAL_S``.
"""

from __future__ import annotations

HEARTBEAT = b"hb"
HEARTBEAT_INTERVAL_S = 1.0


def seq_frame(seq: int) -> bytes:
    """Encode an event ``seq`` as the bus's 8-byte big-endian frame; OverflowError if ``seq`` < 0 or >= 2**64."""
    return seq.to_bytes(8, "big")


def frame_seq(frame: bytes) -> int:
    """Decode a bus seq frame (big-endian bytes, normally 8) back to the ``seq`` int; the inverse of ``seq_frame``."""
    return int.from_bytes(frame, "big")
