"""One exit-status convention for every tritter command (documented in docs/operations.md).

=====  ===================================================================================
0      success (``tritterctl wait``: the run completed)
1      the command worked, and the answer is "no": ``tritterctl wait`` on a run that failed,
       was stopped, or paused itself (a full disk) and so will not complete by itself
2      an error, always with one line on stderr: a bad flag or value, bad input file, an
       existing output without ``--force``, a refused request, a daemon that is not running
       or not answering, an unusable home, a file that cannot be read or written
124    ``--timeout`` ran out (as timeout(1))
130    interrupted (Ctrl-C), as shells report SIGINT
=====  ===================================================================================
"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line and exit ``EXIT_ERROR``.

    argparse's default prints the whole usage block first; a user (or a script reading
    stderr) needs only what was wrong and where to look.  Subparsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see: PROG --help)`` on stderr and exit ``EXIT_ERROR`` (2).

        Raises SystemExit (through ``self.exit``); never returns.
        """
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see: {self.prog.split()[0]} --help)\n")


def version_line(program: str) -> str:
    """``--version`` text of a tritter program: ``"<program> <package version> (protocol v<N>)"``; the
    package version is the installed distribution's (``unknown`` when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    from tritter.protocol.events import PROTOCOL_VERSION

    try:
        installed = version("tritter")
    except PackageNotFoundError:
        installed = "unknown"
    return f"{program} {installed} (protocol v{PROTOCOL_VERSION})"
