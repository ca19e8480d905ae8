"""systemd units: `systemd-analyze verify` is clean (never boots systemd; that would wipe /tmp)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify_clean(tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent) + "/"
    for unit in UNITS.glob("*.service"):  # point ExecStart at this checkout's venv
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/tritter/.venv/bin/", bindir))
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_daemon_unit_has_notify_watchdog_and_hardening() -> None:
    text = (UNITS / "tritterd.service").read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=tritter", "StateDirectory=tritter",
                      "KillMode=mixed", "TimeoutStopSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ProtectHome=yes", "PrivateTmp=yes", "ReadWritePaths=/var/lib/tritter"):
        assert directive in text, directive
