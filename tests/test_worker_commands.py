"""Daemon → worker commands over the real worker ROUTER: a worker that is still starting up gets
every command sent meanwhile, in order, once it has connected (the ROUTER itself would drop them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq
import zmq.asyncio

from tritter.daemon.service import Tritterd
from tritter.daemon.worker_handle import WorkerProcess
from tritter.daemon.worker_protocol import Command, decode_command, ready_message
from tritter.protocol.home import Layout


class _NoProcess:
    """Stands in for the child process: this test plays the worker on its own DEALER."""

    returncode = None


def test_commands_to_a_worker_still_starting_are_held_until_it_connects(tmp_path: Path) -> None:
    async def scenario() -> list[Command | None]:
        (tmp_path / "home").mkdir()
        layout = Layout(tmp_path / "home")
        layout.make_sockets_dir()
        ctx = zmq.asyncio.Context()
        daemon = Tritterd(layout, ctx)
        relay = asyncio.get_running_loop().create_task(daemon.relay_worker_messages())
        worker = daemon.workers["r1"] = WorkerProcess("r1", _NoProcess())  # type: ignore[arg-type]
        try:
            daemon.command_worker("r1", Command.PAUSE)  # typed while the worker imports torch
            daemon.command_worker("r1", Command.STOP)
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.IDENTITY, b"r1")
            dealer.connect(layout.worker_endpoint)
            await asyncio.sleep(0.3)  # connected, but silent: nothing may be lost meanwhile either
            assert not worker.connected and worker.pending == [Command.PAUSE, Command.STOP]
            await dealer.send_multipart(ready_message())
            got = [decode_command(await asyncio.wait_for(dealer.recv(), 10)) for _ in range(2)]
            daemon.command_worker("r1", Command.RESUME)  # connected now: sent at once
            got.append(decode_command(await asyncio.wait_for(dealer.recv(), 10)))
            assert worker.connected and worker.pending == []
            dealer.close(linger=0)
            return got
        finally:
            relay.cancel()
            daemon.eventlog.close()
            daemon.bus.close()
            ctx.destroy(linger=0)

    assert asyncio.run(scenario()) == [Command.PAUSE, Command.STOP, Command.RESUME]
