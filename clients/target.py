"""Which tritterd a client talks to: the local one over ipc, or a remote one over tcp with CURVE.

A remote daemon started with ``tritterd --bind tcp://HOST:PORT`` publishes events on PORT and
answers control and catch-up requests on PORT+1, both CURVE-encrypted and authenticated.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from tritter.protocol.oserrors import error_reason
from tritter.protocol.cli_args import path_arg
from tritter.protocol.home import Layout, remote_endpoints, resolve_home

@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys of a client: the daemon's public key and this client's key pair (Z85-encoded bytes)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def load(cls, server_key: Path, client_key: Path) -> CurveKeys:
        """Keys from the daemon's public certificate ``server_key`` and the client's secret certificate ``client_key``.

        Raises ValueError (one line) when a certificate cannot be read or ``client_key`` holds no secret key.
        """
        def read(path: Path, what: str) -> tuple[bytes, bytes | None]:
            try:
                public, secret = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read the {what} certificate {path}: {error_reason(error)}") from None
            return public, secret

        server_public, _ = read(server_key, "server")
        client_public, client_secret = read(client_key, "client")
        if client_secret is None:
            raise ValueError(f"{client_key} has no secret key: pass the client's .key_secret file")
        return cls(server_public, client_public, client_secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client with these keys (before it connects)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


@dataclass(frozen=True)
class Target:
    """Which tritterd to talk to: its events and control endpoints, a name for messages, the home (local only) and
    CURVE keys (remote only)."""

    events: str
    api: str
    where: str  # how to name it in messages: a home directory or a tcp:// address
    home: Path | None = None  # local daemons only
    curve: CurveKeys | None = None

    @classmethod
    def local(cls, layout: Layout) -> Target:
        """The daemon of ``layout``'s home, over its ipc endpoints; ValueError when a socket path is too long."""
        return cls(layout.events_endpoint, layout.api_endpoint, str(layout.home), layout.home)

    @classmethod
    def remote(cls, url: str, server_key: Path, client_key: Path) -> Target:
        """A daemon started with ``--bind url``: events on PORT, control on PORT+1, with CURVE keys.
        Raises ValueError (one line) for a bad url or unreadable certificates.
        """
        events, api = remote_endpoints(url)
        return cls(events, api, url, None, CurveKeys.load(server_key, client_key))

    @property
    def is_remote(self) -> bool:
        """Whether the daemon is remote (tcp with CURVE) rather than a local home."""
        return self.home is None


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--home``, ``--connect``, ``--server-key`` and ``--client-key`` to ``parser`` (read back by
    ``target_from_args``)."""
    parser.add_argument("--home", type=path_arg, help="home directory (default: $TRITTER_HOME or ~/.local/share/tritter)")
    parser.add_argument("--connect", metavar="tcp://HOST:PORT", help="a remote tritterd started with --bind")
    parser.add_argument("--server-key", type=Path, metavar="FILE", help="the daemon's public certificate (or $TRITTER_SERVER_KEY)")
    parser.add_argument("--client-key", type=Path, metavar="FILE", help="your .key_secret certificate (or $TRITTER_CLIENT_KEY)")


def target_from_args(args: argparse.Namespace) -> Target:
    """The target named by --home / --connect; ValueError (one line) when the flags do not add up."""
    if not args.connect:
        return Target.local(Layout(resolve_home(args.home)))
    if args.home:
        raise ValueError("give either --home (a local daemon) or --connect (a remote one), not both")
    server = args.server_key or os.environ.get("TRITTER_SERVER_KEY")
    client = args.client_key or os.environ.get("TRITTER_CLIENT_KEY")
    if not server or not client:
        raise ValueError("--connect needs --server-key FILE and --client-key FILE (or TRITTER_SERVER_KEY / TRITTER_CLIENT_KEY)")
    return Target.remote(args.connect, Path(server), Path(client))
