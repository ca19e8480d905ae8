"""Encoding on the wire (msgpack) and for humans (JSON), with clear errors for what we cannot read."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from tritter.protocol.events import EVENT_KINDS, PROTOCOL_VERSION, AnyEvent

T = TypeVar("T")


class ProtocolError(ValueError):
    """A message this build of tritter cannot understand (corrupt, unknown kind, newer version)."""


class _Envelope(msgspec.Struct):
    kind: str = "?"
    seq: int = 0
    v: int = 0


_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(AnyEvent)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_json_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    """Encode ``message`` (an event, request, reply or any msgspec-encodable value) as msgpack bytes; TypeError if
    it is not encodable."""
    return _encoder.encode(message)


def encode_json(message: Any) -> bytes:
    """Encode ``message`` as compact UTF-8 JSON bytes (for ``--json`` output and files); TypeError if it is not encodable."""
    return _json_encoder.encode(message)


def _explain(payload: bytes, error: Exception) -> ProtocolError:
    try:
        env = _envelope_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ProtocolError(f"undecodable event ({len(payload)} bytes): {error}")
    if env.v > PROTOCOL_VERSION:
        return ProtocolError(
            f"event seq {env.seq} ({env.kind}) uses protocol v{env.v}; this tritter understands "
            f"v{PROTOCOL_VERSION} - upgrade the client"
        )
    if env.kind not in EVENT_KINDS:
        return ProtocolError(f"event seq {env.seq} has unknown kind {env.kind!r} (known: {', '.join(EVENT_KINDS)})")
    return ProtocolError(f"malformed {env.kind} event seq {env.seq}: {error}")


def decode_event(payload: bytes) -> AnyEvent:
    """Decode one msgpack event; raise ProtocolError (never anything else) when we cannot."""
    try:
        event = _event_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _explain(payload, error) from None
    if event.v > PROTOCOL_VERSION:
        raise _explain(payload, ValueError("newer version"))
    return event


def decode_as(payload: bytes, kind: type[T]) -> T:
    """Decode a msgpack message of a known type (control requests and replies)."""
    try:
        return msgspec.msgpack.decode(payload, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ProtocolError(f"malformed message: {error}") from None
