"""Control requests (``tritterctl`` → ``tritterd``) and the daemon's reply.

One ROUTER socket serves both control and catch-up: a client sends one encoded request
and gets one encoded ``Reply`` back.  Catch-up replies carry already-encoded events as
``msgspec.Raw`` so the daemon forwards log records without decoding them.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from tritter.protocol.config import RunConfig
from tritter.protocol.events import UploadEvent
from tritter.protocol.state import RunState

# A start (or extend) is answered after the daemon has checked the run's corpus and tokenizer,
# in a thread, for at most START_CHECK_TIMEOUT_S (a few-hundred-GB folder on a cold disk can take
# a while); clients wait START_REPLY_TIMEOUT_S for that reply, longer, so a check that ends in time
# is never reported as a failure the daemon then carries out anyway.
START_CHECK_TIMEOUT_S = 60.0
START_REPLY_TIMEOUT_S = START_CHECK_TIMEOUT_S + 15.0
CATCHUP_BATCH = 2000  # events per catch-up reply: bounded so one reply never stalls the daemon


class Request(msgspec.Struct, tag_field="op", kw_only=True):
    """Base of the control requests; the msgspec tag field ``op`` names the request on the wire."""

    pass


class Ping(Request, tag="ping"):
    """Ask whether the daemon is alive; the reply's ``message`` is ``tritterd pid N``."""

    pass


class Start(Request, tag="start"):
    """Start (or queue, beyond ``--slots``) a new run with ``config``; the reply carries the new ``run_id``."""

    config: RunConfig


class Runs(Request, tag="runs"):
    """List every run in the log; the reply's ``runs`` is sorted by start time (unix seconds)."""

    pass


class Status(Request, tag="status"):
    """The state of one run (``run``: id, unique id prefix or name; None = the newest); the reply's ``runs`` holds it."""

    run: str | None = None  # id, unique id prefix or name; None = the newest run


class Stop(Request, tag="stop"):
    """Stop run ``run``: a training run checkpoints first, a queued or held one leaves the queue; refused for a
    finished run."""

    run: str


class Pause(Request, tag="pause"):
    """Pause run ``run`` after a checkpoint (its worker keeps the model), or hold a queued run in its place;
    refused otherwise."""

    run: str


class Resume(Request, tag="resume"):
    """Resume run ``run``: a paused worker goes on at once, otherwise from its last checkpoint when a slot is free."""

    run: str


class Checkpoint(Request, tag="checkpoint"):
    """Ask the training worker of run ``run`` for a checkpoint now (reason ``manual``); refused when it has no worker."""

    run: str


class Extend(Request, tag="extend"):
    """Grow a completed run into bigger stages, as the same run (``tritterctl extend``).

    ``end``: the new last preset (bigger than the run's); ``steps`` / ``tokens``: the budget of
    each new stage (one value = every new stage; None = the run's last stage's budget)."""

    run: str
    end: str
    steps: list[int] | None = None
    tokens: list[int] | None = None


class Upload(Request, tag="upload"):
    """Ask for a stage (or every completed stage) of a run to be uploaded: the daemon records
    ``UploadEvent(status="requested")`` for each, and ``tritter-upload`` acts on it."""

    run: str
    stage: str | None = None  # a preset name; None = every completed stage


class Report(Request, tag="report"):
    """A sink (``tritter-upload``) reports an outcome; the daemon checks the run and stage and records it."""

    event: UploadEvent


# Out-of-range numbers are refused when a request is decoded ("bad request: ..."), not met
# later as an OverflowError; 2**53 keeps every seq exact as a JSON number.
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class Catchup(Request, tag="catchup"):
    """Read the log from seq ``since`` on: the reply's ``events`` holds at most ``limit`` encoded events
    (the daemon clamps ``limit`` to 1..10,000), oldest first, and ``head`` the newest seq.
    """

    since: Seq = 1  # first seq wanted
    limit: Annotated[int, msgspec.Meta(ge=1, le=2**53)] = CATCHUP_BATCH  # the daemon clamps it to a batch


AnyRequest = Union[Ping, Start, Runs, Status, Stop, Pause, Resume, Checkpoint, Upload, Report, Catchup, Extend]


class Reply(msgspec.Struct, kw_only=True):
    """The daemon's one answer to every request.

    ``ok`` False comes with a one-line ``error``; ``message`` is for humans, ``run_id`` names the
    run acted on, ``runs`` answers Runs/Status, ``events`` (still-encoded msgpack events) answers
    Catchup, and ``head`` is the newest seq in the log when the daemon answered.
    """

    ok: bool
    error: str = ""
    message: str = ""
    run_id: str | None = None
    runs: list[RunState] = []
    events: list[msgspec.Raw] = []
    head: int = 0  # the newest seq in the daemon's log when it answered
