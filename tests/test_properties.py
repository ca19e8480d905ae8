"""Property tests (hypothesis) of the three readers of untrusted bytes: the event decoder, the
event log's record reader (recovery after damage), and the control request parser.

Each property is what the code promises for *every* input, not a handful of chosen ones: the
decoders raise ProtocolError and nothing else; an encoded event decodes to itself; an event log
whose tail was damaged anywhere reopens at exactly the records before the damage.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritter.daemon.eventlog import MAGIC, EventLog
from tritter.protocol.control import AnyRequest, Catchup, Pause, Status
from tritter.protocol.events import EVENT_KINDS, CheckpointEvent, RunEvent, StepEvent
from tritter.protocol.wire import ProtocolError, decode_as, decode_event, encode

# msgpack-representable values, nested a little: what a buggy or hostile peer could send.
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
# Dicts that look like events: a known kind, the envelope fields, then anything.
event_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(EVENT_KINDS), "seq": st.integers(-5, 2**40), "v": st.integers(0, 3)},
    optional={"ts": scalars, "run_id": scalars, "step": scalars, "loss": scalars, "status": scalars, "phase": scalars},
)
# A loaded CI machine is slow, not wrong: no per-example deadline, no "generation is slow" failure.
relaxed = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
steps = st.builds(
    StepEvent,
    seq=st.integers(1, 2**40), ts=finite, run_id=st.text(max_size=24), step=st.integers(0, 2**31),
    loss=st.floats(width=64) | st.just(float("nan")), gradient_norm=finite, phase=st.sampled_from(["warmup", "full", "predict", "correct"]),
    was_predicted=st.booleans(), prediction_error=st.none() | finite, step_time_ms=finite, stage=st.sampled_from(["tiny", "small"]),
    lr=finite, tokens=st.integers(0, 2**50), tokens_per_s=finite,
)
runs = st.builds(RunEvent, run_id=st.text(max_size=24), status=st.sampled_from(["started", "paused", "resumed", "completed"]),
                 reason=st.text(max_size=40), resume_step=st.none() | st.integers(0, 10**6))
checkpoints = st.builds(CheckpointEvent, run_id=st.text(max_size=24), path=st.text(max_size=40), step=st.integers(0, 10**6),
                        stage=st.text(max_size=8), bytes=st.integers(0, 2**40), sha256=st.text("0123456789abcdef", min_size=64, max_size=64))
events = steps | runs | checkpoints


def same(a: object, b: object) -> bool:
    """Equal as msgpack: NaN losses compare equal this way, unlike ``==``."""
    return encode(a) == encode(b)


@relaxed
@given(st.binary(max_size=200))
def test_event_decoder_on_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        decode_event(data)
    except ProtocolError as error:
        assert "\n" not in str(error)  # one line for the user


@relaxed
@given(event_like)
def test_event_decoder_on_event_shaped_junk_raises_only_protocol_error(message: dict) -> None:
    try:
        event = decode_event(encode(message))
    except ProtocolError as error:
        assert str(error)
    else:
        assert event.kind == message["kind"] and event.seq == message["seq"] and event.v == message["v"] <= 1


@relaxed
@given(events)
def test_every_event_round_trips_and_carries_the_protocol_version(event: object) -> None:
    decoded = decode_event(encode(event))
    assert same(decoded, event) and type(decoded) is type(event)
    assert msgspec.msgpack.decode(encode(event))["v"] == 1  # on the wire, always


@relaxed
@given(values)
def test_request_parser_raises_only_protocol_error(message: object) -> None:
    try:
        request = decode_as(encode(message), AnyRequest)  # type: ignore[arg-type]
    except ProtocolError:
        return
    assert isinstance(message, dict) and request.op == message.get("op")  # type: ignore[attr-defined]


@relaxed
@given(st.sampled_from([Status(run="r"), Pause(run="x"), Catchup(since=5, limit=9)]), st.binary(max_size=8))
def test_request_parser_rejects_trailing_or_cut_bytes(request: object, extra: bytes) -> None:
    payload = encode(request)
    assert decode_as(payload, AnyRequest) == request  # type: ignore[arg-type]
    for damaged in (payload + extra if extra else None, payload[: len(payload) // 2]):
        if damaged is not None:
            with pytest.raises(ProtocolError):
                decode_as(damaged, AnyRequest)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(events, min_size=1, max_size=12), st.data())
def test_log_reopens_at_exactly_the_records_before_any_damage(batch: list, data: st.DataObject) -> None:
    logging.getLogger("tritterd.log").setLevel(logging.ERROR)  # the loud warning is expected here
    with tempfile.TemporaryDirectory(prefix="tt-prop-") as tmp:
        path = Path(tmp) / "events.log"
        log = EventLog(path)
        ends = [len(MAGIC)]  # file size after each record
        for event in batch:
            log.append(event)
            log.sync()
            ends.append(os.path.getsize(path))
        log.close()
        size = ends[-1]
        # Damage: cut the file anywhere after the magic, or flip one byte anywhere after it.
        where = data.draw(st.integers(len(MAGIC), size - 1), label="offset")
        if data.draw(st.booleans(), label="truncate"):
            os.truncate(path, where)
        else:
            with open(path, "r+b") as f:
                f.seek(where)
                byte = f.read(1)[0]
                f.seek(where)
                f.write(bytes([byte ^ (1 << data.draw(st.integers(0, 7), label="bit"))]))
        intact = sum(1 for end in ends[1:] if end <= where)  # records wholly before the damage
        reopened = EventLog(path)
        try:
            assert reopened.head == intact
            assert all(same(a, b) for a, b in zip(reopened.replay(), batch[:intact], strict=True))
            assert os.path.getsize(path) == ends[intact]  # cut back to the last good record
        finally:
            reopened.close()
