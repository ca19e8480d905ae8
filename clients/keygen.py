"""``tritterctl keygen DIR NAME [--force]``: a CURVE key pair for a remote client (daemon/remote.py).

The pair is made by pyzmq's ``zmq.auth.create_certificates`` in a private (0700) temporary folder
inside ``DIR``, so the secret is never readable by others, not even for a moment, and then
renamed into place: an existing pair is replaced only with ``--force`` (clients/outputs.py),
and an interrupted keygen leaves the old pair as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import zmq.auth

from tritter.clients.outputs import OutputRefused, check_output_file
from tritter.formats.files import fsync_dir


def write_key_pair(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``directory/name.key`` (public) and ``directory/name.key_secret`` (mode 0600),
    creating ``directory`` if needed; returns their paths (public, secret).

    Raises OutputRefused (a ValueError, one line) for a name that is not a plain file name or a
    pair that exists without ``force``; OSError when it cannot write.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise OutputRefused(f"key name {name!r} may use letters, digits, '.', '_' and '-' only")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        check_output_file(path, force, create_parent=True, label="keygen")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=directory))  # 0700: the secret stays private
    try:
        made_public, made_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        for made in (made_public, made_secret):
            fd = os.open(made, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        # secret first: a kill between the renames leaves the new secret with the old public key,
        # which `keygen --force` again repairs; the old secret is never left without its file
        os.replace(made_secret, secret)
        os.replace(made_public, public)
        fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public, secret
