"""The monitor against a remote tritterd (``--connect`` over CURVE), and its run-control keys.

One daemon serves both: ``tritter-tui --connect`` without a terminal reaches the daemon and then
says, in one line, that it needs one (exit 2); the app itself, given the same remote target,
shows the run and drives it with ``p`` (pause, then resume) and ``c`` (checkpoint), each behind
a y/n prompt.  Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from conftest import ctl, follow_until, tool
from test_remote import remote, start_remote_daemon
from test_tui_e2e import press, running, screen_of, until

from tritter.clients.target import Target


def test_monitor_over_connect_pauses_checkpoints_and_resumes(home: Path, tmp_path: Path) -> None:
    daemon, url = start_remote_daemon(home)
    try:
        keys = tmp_path / "keys"
        ctl(home, "keygen", str(keys), "alice")
        shutil.copy(keys / "alice.key", home / "keys" / "authorized" / "alice.key")
        server_key, client_key = home / "keys" / "server.key", keys / "alice.key_secret"
        for _ in range(120):  # the daemon re-reads authorized/ every second
            if remote(url, server_key, client_key, "runs").returncode == 0:
                break
        else:
            raise AssertionError("alice's certificate was never accepted")
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "100000",
                     "--checkpoint-every", "100000", "--no-hybrid", "--name", "remote-keys").stdout.strip()

        # No terminal: it reached the daemon over CURVE (else the line would say so), then refuses.
        flags = ["--connect", url, "--server-key", str(server_key), "--client-key", str(client_key)]
        no_tty = subprocess.run([tool("tritter-tui"), *flags], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=120)
        assert no_tty.returncode == 2 and no_tty.stderr.count("\n") == 1, no_tty.stderr
        assert "needs a terminal" in no_tty.stderr and "Traceback" not in no_tty.stderr

        async def scenario() -> None:
            async with running(layout=Target.remote(url, server_key, client_key)) as (tui, inp):
                def status() -> str:
                    state = tui.monitor.runs.get(run_id)
                    return state.status if state else ""

                await until(tui, lambda: status() == "running" and bool(tui.monitor.history.get(run_id)),
                            "the remote run's first step", 300)
                assert "remote-keys" in screen_of(tui)
                out = await press(tui, inp, "p", lambda: tui.view.confirm is not None, "the pause prompt")
                assert out.splitlines()[-1].startswith(f" Pause run remote-keys ({run_id})? [y/n]")
                await press(tui, inp, "y", lambda: status() == "paused", "the run to pause", 300)
                out = await press(tui, inp, "c", lambda: tui.view.confirm is not None, "the checkpoint prompt")
                assert out.splitlines()[-1].startswith(f" Checkpoint run remote-keys ({run_id})? [y/n]")
                await press(tui, inp, "y", lambda: tui.view.message.startswith("checkpoint:")
                            and "sending" not in tui.view.message, "the daemon's reply", 120)
                assert not tui.view.message_is_error, tui.view.message
                # p on a paused run resumes it.
                out = await press(tui, inp, "p", lambda: tui.view.confirm is not None, "the resume prompt")
                assert out.splitlines()[-1].startswith(f" Resume run remote-keys ({run_id})? [y/n]")
                await press(tui, inp, "y", lambda: status() == "running", "the run to resume", 300)

        asyncio.run(scenario())
        manual = follow_until(home, lambda e: e.get("run_id") == run_id and e["kind"] == "checkpoint"
                              and e["reason"] == "manual", timeout=300)
        ctl(home, "stop", run_id)
        statuses = follow_until(home, lambda e: e.get("run_id") == run_id and e["kind"] == "run"
                                and e["status"] == "stopped", timeout=300)
        assert manual["step"] >= 1 and statuses["status"] == "stopped"
        runs = [e["status"] for e in _run_events(home, run_id) if e["kind"] == "run"]
        assert runs == ["started", "paused", "resumed", "stopped"]
    finally:
        daemon.stop()


def _run_events(home: Path, run_id: str) -> list[dict]:
    from conftest import events

    return [e for e in events(home) if e.get("run_id") == run_id]
