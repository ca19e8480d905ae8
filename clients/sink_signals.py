"""SIGTERM/SIGINT for the sinks, from the first line of their program to the last: always exit 0.

A sink stopped by a signal exits 0 (docs/operations.md, "Exit status"), whenever the signal
comes.  Three phases, three handlers:

1. **starting** (importing tensorboardX, zmq, ...; parsing flags): nothing is written yet, so a
   signal ends the program at once with status 0 (``os._exit(0)``, not ``SystemExit``: that
   would unwind half-done imports of C extensions and run their clean-up; one trial of ~70 died
   of SIGSEGV that way).  The sink's
   entry module calls ``stop_quietly_while_starting`` before its slow imports; it acts only
   when that module *is* the program (``python -m``, or the console script of that name), so
   importing a sink module elsewhere (tests, ``tritter-ckpt``) changes no signal handler;
2. **running**: ``sink_base.run_sink`` replaces that handler with the event loop's, which
   cancels the sink (the first signal; later ones are only logged) so it finishes the blocking
   step in flight, saves its cursor and closes;
3. **exiting**: once the loop is done a signal changes nothing (``ignore_stop_signals``, also
   run at exit: the interpreter's clean-up would otherwise restore the default action): the
   exit status is the one the sink already decided.

Standard library only: this module is imported before anything slow.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_program = False  # whether this process is a sink program (its entry module installed the handler)


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(0)  # nothing has been written yet: no file to close, no cursor to save


def stop_quietly_while_starting(module: str, program: str) -> bool:
    """Make SIGTERM/SIGINT exit 0 from now on, when this process is the sink ``program``.

    ``module``: the caller's ``__name__`` (``"__main__"`` under ``python -m``); ``program``: the
    sink's console-script name (e.g. ``"tritter-tensorboard"``), matched against ``sys.argv[0]``.
    Call it at the top of the sink's entry module, before its slow imports.  Returns whether the
    handler was installed (False when the module is merely imported, or off the main thread).
    """
    global _program
    invoked_as = os.path.basename(sys.argv[0]) if sys.argv else ""
    if module != "__main__" and invoked_as != program:
        return False
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _exit_quietly)
    except ValueError:  # not the main thread: signal handlers can only be set there
        return False
    _program = True
    atexit.register(ignore_stop_signals)  # however the program ends, a late signal does not change its status
    return True


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back for the block (they are delivered after it), so swapping their
    handlers leaves no instant where the default action (death by signal, status 143) applies."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """In a sink program, ignore SIGTERM/SIGINT from now on (the sink is exiting with its status);
    elsewhere (a sink run in-process) do nothing."""
    if _program:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
