"""The folder of authorized client certificates (``HOME/keys/authorized/``), read one file at a time.

Each ``*.key`` file is loaded on its own with ``zmq.auth.load_certificate`` (pyzmq's certificate
format, as ``tritterctl keygen`` writes it), so one bad file (garbage, empty, a folder, a FIFO, an
unreadable file, a secret certificate) is skipped with one log line naming it and why, and every
other key still counts.  (``zmq.auth``'s ``configure_curve(location=...)`` loads the whole folder and
gives up at the first bad file, which froze authorization: see docs/operations.md.)

A scan re-reads only the entries whose ``stat`` changed since the previous scan, so an unchanged bad
file is reported once, not every second.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from tritter.protocol.oserrors import os_error_reason

log = logging.getLogger("tritterd.remote")

KEY_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_CERT_BYTES = 64 * 1024  # a certificate is ~300 bytes; anything far larger was copied by mistake

# (mode, inode, device, size, mtime ns, ctime ns): ctime catches a chmod that makes a file readable.
Signature = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Loaded:
    """One entry's outcome: ``key`` (z85 public key, 40 ASCII bytes) when usable, else ``problem`` (why not)."""

    key: bytes | None
    problem: str | None


def _signature(path: Path) -> Signature | None:
    """The entry's identity and change marks (following a symlink); None when it vanished or dangles."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_public_key(path: Path, signature: Signature | None) -> Loaded:
    """Load one authorized certificate.

    Args: ``path`` a ``*.key`` entry; ``signature`` its ``_signature`` (None: it cannot be stat'ed).
    Returns ``Loaded(key=z85 public key)`` for a public certificate, else ``Loaded(problem=one line)``:
    not a regular file (folder, FIFO, socket: never opened, so a FIFO cannot block the daemon), larger
    than ``MAX_CERT_BYTES``, unreadable, no ``public-key`` line, a key that is not 40 Z85 characters
    (32 bytes), or a secret certificate (the client's ``.key_secret`` copied under a ``.key`` name).
    Never raises.
    """
    if signature is None:
        return Loaded(None, "cannot be read (it vanished, or a symlink to nothing)")
    mode, size = signature[0], signature[3]
    if stat.S_ISDIR(mode):
        return Loaded(None, "is a folder, not a certificate file")
    if not stat.S_ISREG(mode):
        return Loaded(None, "is not a regular file (a FIFO, socket or device)")
    if size > MAX_CERT_BYTES:
        return Loaded(None, f"is {size} bytes, too large for a certificate (at most {MAX_CERT_BYTES})")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        return Loaded(None, "has no public key (not a certificate made by `tritterctl keygen`)")
    except OSError as error:
        return Loaded(None, f"cannot be read: {os_error_reason(error)}")
    if secret is not None:
        return Loaded(None, "holds a SECRET key: authorize the client's public .key file, never its .key_secret "
                            "(delete this file; the client should make a new pair with `tritterctl keygen`)")
    try:
        valid = len(z85.decode(public)) == 32
    except (ValueError, KeyError):  # KeyError: a character outside the Z85 alphabet
        valid = False
    if not valid:
        return Loaded(None, "has a malformed public key (a CURVE public key is 40 Z85 characters)")
    return Loaded(public, None)


class AuthorizedKeys:
    """The public keys allowed in, from one folder; ``scan()`` re-reads it, ``keys`` is the current set.

    A missing or unreadable folder allows nobody (fail closed), logged once per change of state.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys: frozenset[bytes] = frozenset()  # z85 public keys
        self._entries: dict[str, tuple[Signature | None, Loaded]] = {}
        self._folder_problem: str | None = None
        self._secrets_seen: frozenset[str] = frozenset()

    def scan(self) -> bool:
        """Re-read the folder: load new or changed ``*.key`` entries, drop removed ones, log each newly
        skipped file once (name and why).  Returns True when the set of allowed keys changed.  Never raises."""
        try:
            names = sorted(os.listdir(self.folder))
        except OSError as error:
            problem = os_error_reason(error)
            if problem != self._folder_problem:
                log.error("cannot read %s (%s): no remote client is authorized until it can be read", self.folder, problem)
            self._folder_problem = problem
            self._entries = {}
            return self._set(frozenset())
        if self._folder_problem is not None:
            log.info("%s can be read again", self.folder)
            self._folder_problem = None
        self._warn_secrets(names)
        entries: dict[str, tuple[Signature | None, Loaded]] = {}
        for name in names:
            if not name.endswith(KEY_SUFFIX):
                continue
            path = self.folder / name
            signature = _signature(path)
            previous = self._entries.get(name)
            if previous is not None and previous[0] == signature:  # None == None: still dangling, said once
                entries[name] = previous  # unchanged: neither re-read nor re-reported
                continue
            loaded = load_public_key(path, signature)
            if loaded.problem is not None:
                log.warning("skipped authorized key %s: it %s", path, loaded.problem)
            entries[name] = (signature, loaded)
        self._warn_duplicates(entries)
        self._entries = entries
        return self._set(frozenset(loaded.key for _, loaded in entries.values() if loaded.key is not None))

    def _set(self, keys: frozenset[bytes]) -> bool:
        changed = keys != self.keys
        self.keys = keys
        return changed

    def summary(self) -> str:
        """One line for the log: allowed keys, files read, files skipped and the folder."""
        skipped = sum(1 for _, loaded in self._entries.values() if loaded.key is None)
        return (f"{len(self.keys)} client key(s) authorized from {len(self._entries) - skipped} file(s) in {self.folder}"
                + (f", {skipped} file(s) skipped" if skipped else ""))

    def _warn_secrets(self, names: list[str]) -> None:
        # A .key_secret is not read (wrong suffix), but it is a client's private key lying on the server.
        secrets = frozenset(name for name in names if name.endswith(SECRET_SUFFIX))
        for name in sorted(secrets - self._secrets_seen):
            log.warning("ignored %s: a SECRET key has no place on the server; authorize the client's public "
                        ".key file instead and delete this one", self.folder / name)
        self._secrets_seen = secrets

    def _warn_duplicates(self, entries: dict[str, tuple[Signature | None, Loaded]]) -> None:
        # The same key in two files is harmless, but deleting one of them then revokes nothing: say so.
        holders: dict[bytes, list[str]] = {}
        for name, (_, loaded) in entries.items():
            if loaded.key is not None:
                holders.setdefault(loaded.key, []).append(name)
        for key, names in holders.items():
            new = [name for name in names if entries[name] is not self._entries.get(name)]
            if len(names) > 1 and new:
                log.warning("%s hold the same key: it stays authorized until all of them are deleted", " and ".join(names))
