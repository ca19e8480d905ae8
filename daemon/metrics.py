"""``tritterd --metrics HOST:PORT``: a Prometheus ``/metrics`` endpoint (prometheus-client).

Per run (labels ``run_id``, ``name``): status (one series per status, 1 for the current one),
step, loss, held-out eval loss, tokens/s, ETA seconds, alerts.  Per daemon: events logged, event
log bytes, bus subscribers, runs waiting for a slot, the last event-log fsync's latency.

The HTTP server is prometheus-client's own (a WSGI server in a daemon thread), so a scrape never
runs on the asyncio loop.  The collector reads a snapshot that the loop refreshes every
housekeeping tick (``refresh``): the scrape thread never touches live daemon state, only an
immutable tuple swapped in by one assignment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.registry import Collector, CollectorRegistry
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("tritterd.metrics")

STATUSES: tuple[str, ...] = ("queued", "running", "paused", "interrupted", "completed", "failed", "stopped")
_ADDRESS = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[^:\s\[\]]*):)?(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port); the host defaults to
    127.0.0.1 (never all interfaces unless asked).  Port 0 = any free port.  ValueError (one
    line) for anything else."""
    match = _ADDRESS.match(text.strip())
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"--metrics expects HOST:PORT (or PORT for 127.0.0.1), got {text!r}")
    host = (match["host"] or "127.0.0.1").strip("[]")
    return host, int(match["port"])


@dataclass(frozen=True)
class RunRow:
    """One run as the metrics endpoint shows it: step (optimizer steps), losses (nats/token), tokens/s, ETA
    (seconds), alert count."""

    run_id: str
    name: str
    status: str
    step: int
    loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    mfu: float | None
    eta_s: float | None
    alerts: int


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports, taken on the event loop: run rows, events logged (the head seq), log size in
    bytes, connected subscribers, queued runs and the latest fsync's duration in seconds (None before the first).
    """

    runs: tuple[RunRow, ...] = ()
    events_logged: int = 0
    log_bytes: int = 0
    subscribers: int = 0
    queued: int = 0
    fsync_seconds: float | None = None


class SubscriberCount:
    """Connected bus subscribers, from ZeroMQ socket-monitor events on the PUB sockets
    (accepted minus disconnected); ``poll`` drains the monitor without blocking."""

    def __init__(self, sockets: list[zmq.Socket]) -> None:
        self.monitors = [s.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED) for s in sockets]
        self.count = 0

    def poll(self) -> int:
        """Drain the socket monitors without blocking and return the connected subscribers (accepted −
        disconnected, at least 0)."""
        for monitor in self.monitors:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.count += 1 if event["event"] == zmq.EVENT_ACCEPTED else -1
        self.count = max(0, self.count)
        return self.count

    def close(self) -> None:
        """Close the monitor sockets."""
        for monitor in self.monitors:
            monitor.close(linger=0)


class SnapshotCollector(Collector):
    """Turns the latest ``Snapshot`` into metric families at scrape time (scrape thread)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Any]:
        """The current Snapshot as Prometheus metric families (per-run gauges labelled run_id and name, then
        daemon-wide ones)."""
        snap = self.snapshot  # one read: the loop swaps whole snapshots
        labels = ["run_id", "name"]
        status = GaugeMetricFamily("tritter_run_status", "1 for the run's current status", labels=[*labels, "status"])
        step = GaugeMetricFamily("tritter_run_step", "Global optimizer step of the run", labels=labels)
        loss = GaugeMetricFamily("tritter_run_loss", "Training loss of the last step (nats/token)", labels=labels)
        eval_loss = GaugeMetricFamily("tritter_run_eval_loss", "Held-out loss of the last periodic eval (nats/token)", labels=labels)
        speed = GaugeMetricFamily("tritter_run_tokens_per_second", "Training throughput of the last step", labels=labels)
        mfu = GaugeMetricFamily("tritter_run_mfu", "Model FLOPs utilisation of the last step (0..1; GPU runs)", labels=labels)
        eta = GaugeMetricFamily("tritter_run_eta_seconds", "Seconds left at the median recent step time", labels=labels)
        alerts = CounterMetricFamily("tritter_run_alerts", "Alerts raised for the run", labels=labels)
        for run in snap.runs:
            key = [run.run_id, run.name]
            for name in STATUSES if run.status in STATUSES else (*STATUSES, run.status):
                status.add_metric([*key, name], 1.0 if name == run.status else 0.0)
            step.add_metric(key, run.step)
            if run.loss is not None:
                loss.add_metric(key, run.loss)
            if run.eval_loss is not None:
                eval_loss.add_metric(key, run.eval_loss)
            speed.add_metric(key, run.tokens_per_s)
            if run.mfu is not None:
                mfu.add_metric(key, run.mfu)
            if run.eta_s is not None:
                eta.add_metric(key, run.eta_s)
            alerts.add_metric(key, run.alerts)
        yield from (status, step, loss, eval_loss, speed, mfu, eta, alerts)
        yield CounterMetricFamily("tritter_events_logged", "Events in the daemon's log", value=snap.events_logged)
        yield GaugeMetricFamily("tritter_event_log_bytes", "Size of the event log file", value=snap.log_bytes)
        yield GaugeMetricFamily("tritter_subscribers", "Connected event-bus subscribers", value=snap.subscribers)
        yield GaugeMetricFamily("tritter_queue_length", "Runs waiting for a training slot", value=snap.queued)
        if snap.fsync_seconds is not None:
            yield GaugeMetricFamily("tritter_log_fsync_seconds", "Latency of the last event-log fsync", value=snap.fsync_seconds)


class MetricsServer:
    """The endpoint: ``start(daemon, host, port)`` binds (OSError when it cannot), ``refresh``
    from the loop, ``stop`` at shutdown.  ``url`` names the bound address (port 0 resolved)."""

    def __init__(self, daemon: Any, host: str, port: int) -> None:
        self.daemon = daemon
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.subscribers = SubscriberCount(list(daemon.bus.sockets))
        try:
            self.httpd, self.thread = start_wsgi_server(port, host, self.registry)
        except OSError as error:
            self.subscribers.close()
            raise OSError(f"cannot serve --metrics on {host}:{port}: {error.strerror or error}") from None
        bound_host, bound_port = self.httpd.server_address[:2]
        self.url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}/metrics"
        self.refresh()

    def refresh(self) -> None:
        """Build a fresh snapshot from the daemon's state (call on the loop's thread)."""
        daemon = self.daemon
        rows = []
        for state in list(daemon.runs.values()):
            rows.append(RunRow(
                run_id=state.run_id, name=state.run_name, status=state.status, step=state.current_step,
                loss=state.current_loss, eval_loss=state.eval_loss, tokens_per_s=state.tokens_per_s,
                mfu=state.mfu, eta_s=daemon.watch.eta_seconds(state), alerts=state.alert_count,
            ))
        self.collector.snapshot = Snapshot(
            runs=tuple(rows), events_logged=daemon.eventlog.head, log_bytes=daemon.eventlog.size_bytes,
            subscribers=self.subscribers.poll(), queued=sum(1 for r in rows if r.status == "queued"),
            fsync_seconds=daemon.eventlog.last_sync_s,
        )

    def stop(self) -> None:
        """Shut the HTTP server down, join its thread (at most 5 s) and close the subscriber monitors."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        self.subscribers.close()
