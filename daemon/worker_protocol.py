"""The daemon ↔ worker protocol: every frame, command and outcome, defined once.

One ZeroMQ pair per home: the daemon's ROUTER on ``HOME/sock/workers.ipc`` and one DEALER per
worker process (identity = the run id).  The ROUTER sees each message with the identity in
front, ``[run_id, kind, body]``.

Worker → daemon (``WorkerFrame``):

- ``[b"ready", b""]``: its first message, sent as soon as it has connected.  The ROUTER drops a
  message to an identity that has not connected yet, so the daemon holds a worker's commands
  until its first message has arrived (a ``stop`` typed while a resumed worker starts up would
  otherwise be lost);
- ``[b"event", msgpack event]``: one event (``protocol/events.py``), as ``wire.encode`` makes it;
- ``[b"exit", outcome]``: the worker's last word, its ``Outcome`` in UTF-8, sent after its last
  event (so all its events have arrived once this has).

Daemon → worker: one frame, a ``Command`` in UTF-8.  The trainer checks for commands between
optimizer steps (``Controls.poll``) and blocks on them while paused (``Controls.wait``).
An unknown word is ignored (a newer daemon talking to an older worker loses nothing).
"""

from __future__ import annotations

import enum
from typing import Protocol


class Command(enum.StrEnum):
    """What the daemon asks of a running worker (``tritterctl`` verbs, plus ``shutdown``)."""

    PAUSE = "pause"  # checkpoint, then wait for resume / stop / checkpoint / shutdown
    RESUME = "resume"  # continue a paused run
    STOP = "stop"  # checkpoint and end the run (outcome ``stopped``)
    CHECKPOINT = "checkpoint"  # write a checkpoint now and carry on
    SHUTDOWN = "shutdown"  # the daemon is stopping: checkpoint and exit; the run resumes on its next start


class Outcome(enum.StrEnum):
    """How a worker's training ended, as it reports in its ``exit`` frame."""

    COMPLETED = "completed"  # every stage trained
    STOPPED = "stopped"  # ``stop``
    SHUTDOWN = "shutdown"  # ``shutdown`` (or SIGTERM): not the run's end, it resumes later
    FAILED = "failed"  # an exception; a ``run failed`` event with the reason went first


class WorkerFrame(bytes, enum.Enum):
    """The first frame of a worker → daemon message (after the ROUTER's identity frame)."""

    READY = b"ready"
    EVENT = b"event"
    EXIT = b"exit"


class Controls(Protocol):
    """Where a trainer takes its commands from (the daemon's socket, rank 0's broadcast, a test)."""

    def poll(self) -> Command | None:
        """A pending command, or None; never blocks."""
        ...

    def wait(self) -> Command:
        """Block until a command arrives and return it."""
        ...


def encode_command(command: Command) -> bytes:
    """The one frame the daemon sends for ``command`` (UTF-8 of its word)."""
    return command.value.encode()


def decode_command(frame: bytes) -> Command | None:
    """The ``Command`` in a daemon → worker frame; None for a word this worker does not know."""
    try:
        return Command(frame.decode(errors="replace"))
    except ValueError:
        return None


def ready_message() -> list[bytes]:
    """A worker's first message: it is connected, commands can reach it from now on."""
    return [WorkerFrame.READY.value, b""]


def event_message(payload: bytes) -> list[bytes]:
    """A worker → daemon message carrying one encoded event (``wire.encode``)."""
    return [WorkerFrame.EVENT.value, payload]


def exit_message(outcome: Outcome) -> list[bytes]:
    """A worker's last message: how its training ended."""
    return [WorkerFrame.EXIT.value, Outcome(outcome).value.encode()]


def decode_outcome(body: bytes) -> Outcome | None:
    """The ``Outcome`` of an ``exit`` frame's body; None for a word the daemon does not know."""
    try:
        return Outcome(body.decode(errors="replace"))
    except ValueError:
        return None
