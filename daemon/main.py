"""``tritterd``: the long-running daemon (foreground, logs to stderr)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys

import zmq
import zmq.asyncio

from tritter.daemon.api import Api
from tritter.daemon import observability
from tritter.daemon.children import recorder_child
from tritter.daemon.notify import Notifier
from tritter.daemon.remote import Gatekeeper, bind_remote, server_keys
from tritter.daemon.gpus import visible_gpu_count
from tritter.daemon.scheduler import SlotPolicy
from tritter.daemon.service import Tritterd
from tritter.formats.text import printable_logs
from tritter.recipe.planner import peak_flops_override
from tritter.protocol.cli_args import bounded_int, path_arg
from tritter.protocol.exitcodes import EXIT_ERROR, OneLineParser, version_line
from tritter.protocol.home import Layout, remote_endpoints, resolve_home
from tritter.protocol.oserrors import home_error_line
from tritter.protocol.wire import ProtocolError

log = logging.getLogger("tritterd")


class AlreadyRunning(Exception):
    """Another tritterd holds this home's lock; the message names its pid and the home."""

    pass


def take_lock(layout: Layout) -> int:
    """One writer per home: a second tritterd on the same HOME refuses to start."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"another tritterd (pid {holder}) is already running on {layout.home}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def prepare_sockets(layout: Layout) -> None:
    """Create the socket folder, private to this user (mode 0700), and remove ``*.ipc`` files a crashed
    daemon left (call with the lock held).  Raises OSError, or ValueError for a runtime folder that is not private.
    """
    # Only the daemon's user may reach the local sockets.
    if layout.sockets.parent == layout.home:
        layout.sockets.mkdir(parents=True, exist_ok=True)
        os.chmod(layout.sockets, 0o700)
    else:  # a home too long for socket paths: a private runtime folder (protocol/home.py)
        layout.make_sockets_dir()
    for stale in layout.sockets.glob("*.ipc"):  # left by a crashed daemon; we hold the lock now
        stale.unlink()


async def run_daemon(layout: Layout, recorder: bool, bind: str | None,
                     monitoring: observability.Options | None = None, slots: SlotPolicy | None = None) -> int:
    """Serve ``layout``'s home until SIGTERM/SIGINT: the API, the bus, worker relay, housekeeping, the
    supervised recorder (``recorder``), ``bind``'s CURVE tcp endpoints and ``monitoring``'s extras; resume the
    runs that were training; on the signal checkpoint running runs, stop everything, remove the ipc files.
    Returns exit status 0.  Raises OSError/zmq.ZMQError/ProtocolError when the home, log or sockets are unusable.
    """
    notifier = Notifier()
    ctx = zmq.asyncio.Context()
    daemon = Tritterd(layout, ctx)
    if slots is not None:
        daemon.slots = slots
    api = Api(daemon, [layout.api_endpoint])
    gatekeeper = None
    if bind:
        events_at, api_at = remote_endpoints(bind)
        keys = server_keys(layout.home / "keys")
        gatekeeper = Gatekeeper(ctx, layout.home / "keys" / "authorized")
        gatekeeper.start_watching()
        bind_remote(daemon.bus.add_remote, events_at, keys, "the events port, --bind's port")
        allows = gatekeeper.allows
        bind_remote(lambda endpoint, server: api.add_remote(endpoint, server, allows), api_at, keys,
                    "the control port, --bind's port + 1")  # requests checked per message: removal revokes open ones
        log.info("serving remote clients with CURVE: events %s, control %s", events_at, api_at)
    daemon.bus.start(daemon.eventlog.head)
    extras = await observability.start(daemon, monitoring, str(layout.home))  # --metrics, --on-alert, ...
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(api.answer_requests()), loop.create_task(daemon.relay_worker_messages()), loop.create_task(daemon.housekeeping())]
    child = None
    if recorder:
        child = recorder_child(str(layout.home))
        tasks.append(loop.create_task(child.run()))
    await daemon.resume_active_runs()

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier.ready(daemon.status_line())
    log.info("tritterd ready: home %s, events %s, control %s", layout.home, layout.events_endpoint, layout.api_endpoint)

    async def keep_systemd_informed() -> None:
        interval = notifier.watchdog_interval_s or 5.0
        while True:
            notifier.watchdog()  # from the event loop itself: a stuck loop stops the pings
            notifier.status(daemon.status_line())
            await asyncio.sleep(min(interval, 5.0))

    if notifier.enabled:
        tasks.append(loop.create_task(keep_systemd_informed()))
    await stop.wait()
    if child:  # a child that exits from here on (a signal to the whole group) stays down
        child.begin_shutdown()
    log.info("stopping: checkpointing running runs")
    notifier.stopping()
    await daemon.shutdown()
    await extras.stop()
    if child:
        await child.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    api.close()
    if gatekeeper:
        gatekeeper.stop()
    ctx.term()
    for endpoint in layout.sockets.glob("*.ipc"):  # clients then say "not running", not "stale"
        endpoint.unlink(missing_ok=True)
    log.info("tritterd stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tritterd`` command line: parse flags, take the home's lock and run the daemon in the foreground.

    Returns the exit status: 0 after a clean stop, ``EXIT_ERROR`` (2) with one line on stderr for an unusable
    home, a bad flag value, a second daemon or a socket error; a bad flag exits 2 through the parser.
    """
    parser = OneLineParser(prog="tritterd", description="The tritter training daemon (runs in the foreground).")
    parser.add_argument("--version", action="version", version=version_line("tritterd"))
    parser.add_argument("--home", type=path_arg, help="home directory (default: $TRITTER_HOME or ~/.local/share/tritter)")
    parser.add_argument("--bind", metavar="tcp://HOST:PORT", help="also serve remote clients over tcp with CURVE")
    parser.add_argument("--no-recorder", action="store_true", help="do not supervise a tritter-record child")
    parser.add_argument("--slots", type=bounded_int(1, 1024, "a slot count"), metavar="N",
                        help="runs that train at once per device kind; more wait, queued (default: 1 on CPU, 1 per GPU)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    observability.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    printable_logs()  # user text in log lines (run names, reasons) shown escaped
    layout = Layout(resolve_home(args.home))
    try:
        layout.home.mkdir(parents=True, exist_ok=True)
        lock = take_lock(layout)
        prepare_sockets(layout)
        layout.events_endpoint  # noqa: B018 - fail early on a home path too long for ipc
        if args.bind:
            remote_endpoints(args.bind)  # a bad --bind is a usage error, before anything starts
        monitoring = observability.options_from(args)
        peak_flops_override(os.environ.get("TRITTER_PEAK_TFLOPS"))  # a bad value: one line now, not a failed run later
        slots = SlotPolicy.from_flag(args.slots, visible_gpu_count())  # a bad --slots: one line, before anything starts
        code = asyncio.run(run_daemon(layout, recorder=not args.no_recorder, bind=args.bind, monitoring=monitoring,
                                      slots=slots))
    except (AlreadyRunning, ProtocolError, ValueError, OSError, zmq.ZMQError) as error:
        print(f"tritterd: error: {home_error_line(error, layout.home)}", file=sys.stderr)  # plain words, no [Errno N]
        return EXIT_ERROR
    with contextlib.suppress(OSError):
        os.close(lock)
    return code


if __name__ == "__main__":
    sys.exit(main())
