"""The run queue as folded state (protocol/state.py) and the slot counting (daemon/scheduler.py)."""

from __future__ import annotations

from tritter.daemon.scheduler import SlotPolicy
from tritter.protocol.config import RunConfig
from tritter.protocol.events import RunEvent
from tritter.protocol.state import RunState, fold, is_held, queue_order


def replay(events: list[RunEvent]) -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    for seq, event in enumerate(events, start=1):
        event.seq, event.ts = seq, float(seq)
        fold(runs, event)
    return runs


def queued(run: str, priority: int = 0, cuda: bool = False, nproc: int = 1) -> RunEvent:
    return RunEvent(run_id=run, status="queued", run_name=run, config=RunConfig(priority=priority, cuda=cuda, nproc=nproc))


def test_order_is_priority_then_arrival_and_a_hold_keeps_the_place() -> None:
    events = [
        RunEvent(run_id="a", status="started", run_name="a", config=RunConfig()),
        queued("b"), queued("c"), queued("d", priority=5), queued("e"),
        RunEvent(run_id="c", status="paused"),  # held
        RunEvent(run_id="e", status="stopped"),  # removed
    ]
    runs = replay(events)
    assert [r.run_id for r in queue_order(runs.values())] == ["d", "b"]
    assert (runs["d"].queue_position, runs["b"].queue_position, runs["c"].queue_position) == (1, 2, 0)
    assert is_held(runs["c"]) and runs["c"].queued_seq == 3 and runs["e"].queued_seq == 0
    runs = replay([*events, RunEvent(run_id="c", status="queued", run_name="c")])  # released: back in its place
    assert [r.run_id for r in queue_order(runs.values())] == ["d", "b", "c"]
    runs = replay([*events, RunEvent(run_id="d", status="started", run_name="d", config=runs["d"].config)])
    assert runs["d"].launched and runs["d"].queue_position == 0 and runs["b"].queue_position == 1


def test_a_run_paused_while_training_is_queued_anew_at_the_back() -> None:
    runs = replay([
        queued("x"), RunEvent(run_id="x", status="started", run_name="x", config=RunConfig()),
        queued("y"),
        RunEvent(run_id="x", status="paused"),
        RunEvent(run_id="x", status="queued", run_name="x"),
    ])
    assert [r.run_id for r in queue_order(runs.values())] == ["y", "x"]
    assert runs["x"].launched and not is_held(runs["x"])


def test_slots_per_pool_and_nproc() -> None:
    policy = SlotPolicy.from_flag(None, gpus=2)
    assert (policy.cpu, policy.cuda) == (1, 2)
    runs = replay([
        RunEvent(run_id="gpu1", status="started", run_name="g", config=RunConfig(cuda=True)),
        queued("big", cuda=True, nproc=2), queued("cpu1"), queued("small", cuda=True),
    ])
    # One GPU is busy: the 2-rank run waits, and the 1-rank run behind it may not overtake it.
    assert policy.startable(runs, ["gpu1"]) == ["cpu1"]
    assert policy.startable(runs, []) == ["big", "cpu1"]
    assert not policy.fits_now(RunConfig(cuda=True), runs, ["gpu1"])  # the pool has a queue
    assert policy.fits_now(RunConfig(), replay([]), [])
    # A run needing more slots than its pool has takes the whole pool (it runs alone).
    assert SlotPolicy.from_flag(1, gpus=0).need(RunConfig(nproc=4)) == 1
