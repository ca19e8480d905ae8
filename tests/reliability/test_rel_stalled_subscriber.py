"""(e) a subscriber that stops reading (SIGSTOP): the publisher never waits for it, and once it
reads again it catches up by seq with no gap and no duplicate.

Only what a stall cannot change is asserted here, so the result does not depend on how loaded
the machine is: every publish call returns (none waits for the stopped reader) and a run trains
to its end while a reader is stopped.  The training-speed ratio (median step time with a stopped
reader vs a reading one) measures the machine as much as tritter, so it is a benchmark:
``bench/stalled_subscriber.py`` (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from conftest import Daemon, EventStream, events
from reliability_helpers import TEST_TIMEOUT_S, report, start_run, wait_done
from tritter.daemon.bus import PUB_HWM, Bus
from tritter.protocol.events import StepEvent
from tritter.protocol.wire import encode

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

# A blocked send waits forever, a non-blocking one returns in microseconds: any bound in between
# tells them apart, so this one is generous enough for a badly overloaded machine.
SEND_BOUND_S = 5.0
FLOOD = 3 * PUB_HWM  # more than the high-water mark plus the socket buffers can hold

READER = """
import sys, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
sub.recv_multipart()
print("ready", flush=True)
while True:
    sub.recv_multipart()
"""


def test_publisher_never_waits_for_a_stopped_reader(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/events.ipc"
    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, [endpoint])  # the daemon's own publisher
    reader = subprocess.Popen([sys.executable, "-c", READER, endpoint], stdout=subprocess.PIPE, text=True)
    try:
        payload = encode(StepEvent(run_id="r", seq=1, ts=0.0, step=1, loss=2.0, gradient_norm=1.0, phase="full",
                                   was_predicted=False, prediction_error=None, step_time_ms=1.0, stage="tiny",
                                   lr=1e-3, tokens=1, tokens_per_s=1.0))
        # Until the reader has a message (a SUB that joins late misses what was sent before).
        os.set_blocking(reader.stdout.fileno(), False)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while not (reader.stdout.readline() or "").startswith("ready"):  # type: ignore[union-attr]
            assert reader.poll() is None and time.monotonic() < deadline, "reader never received a message"
            bus.publish("step", 0, payload)
            time.sleep(0.01)
        os.kill(reader.pid, signal.SIGSTOP)  # it reads nothing from now on
        slowest = 0.0
        for seq in range(1, FLOOD + 1):
            began = time.perf_counter()
            bus.publish("step", seq, payload)
            slowest = max(slowest, time.perf_counter() - began)
        report("e_publisher_with_stopped_reader", events=FLOOD, slowest_send_ms=round(slowest * 1000, 3))
        assert slowest < SEND_BOUND_S, f"a publish call took {slowest:.1f} s with the reader stopped"
    finally:
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait(timeout=10)
        bus.close()
        ctx.term()


def test_run_trains_to_its_end_while_a_reader_is_stopped_and_the_reader_catches_up(daemon: Daemon, home: Path) -> None:
    began = time.monotonic()
    daemon.start()
    stalled = EventStream(home, since=1)
    try:
        run_id = start_run(home, ("--start", "tiny", "--end", "tiny", "--steps", "3", "--checkpoint-every", "2",
                                  "--no-hybrid"), "stall")
        first = stalled.next(timeout=120)
        assert first is not None and first["seq"] == 1  # it is subscribed and reading
        os.kill(stalled.pid, signal.SIGSTOP)
        # The whole run happens while this reader reads nothing: nothing waits for it.
        wait_done(home, run_id, daemon)
        head = events(home)[-1]["seq"]
        os.kill(stalled.pid, signal.SIGCONT)
        seqs = [first["seq"]]
        deadline = time.monotonic() + 120
        while seqs[-1] < head and (event := stalled.next(deadline - time.monotonic())) is not None:
            seqs.append(event["seq"])
    finally:
        if stalled.proc.poll() is None:
            os.kill(stalled.pid, signal.SIGCONT)
        stalled.close()
    assert seqs == list(range(1, head + 1)), "the stopped reader saw a gap or a duplicate, or did not catch up"
    report("e_stalled_subscriber", caught_up_events=len(seqs), duration_s=round(time.monotonic() - began, 1))
