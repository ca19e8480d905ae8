"""Monitoring pieces in isolation: alert detectors, stall watch, replay filter, the alert hook,
the run-state fold, record lines, CLI parsing, eval and sampling on a real (tiny) model.

Expected values are worked out by hand in the comments, not computed by the code under test.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import msgspec
import pytest
import torch

from conftest import requires_gpu

from tritter.clients.monitoring_cli import monitoring_record, parse_kinds, read_prompts
from tritter.daemon.engine.loss_watch import LossWatch, WatchSettings
from tritter.daemon.metrics import parse_address
from tritter.daemon.watch import AlertHook, DaemonWatch, is_monitoring_replay
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AlertEvent, EvalEvent, RunEvent, Sample, SampleEvent, StepEvent
from tritter.protocol.state import MAX_ALERTS, RunState, fold


def _reasons(alerts: list[AlertEvent]) -> list[str]:
    return [a.reason for a in alerts]


# -- LossWatch -------------------------------------------------------------------------------------
def test_loss_spike_against_the_moving_average() -> None:
    watch = LossWatch(WatchSettings(spike_factor=1.5, ema_alpha=0.5, warmup_steps=2, cooldown_steps=5))
    for step in (1, 2, 3):
        assert watch.observe(step, 4.0, 1.0) == []  # EMA stays 4.0
    (alert,) = watch.observe(4, 7.0, 1.0)  # 7 > 1.5 x 4 = 6
    assert (alert.reason, alert.level, alert.step, alert.value, alert.threshold) == ("loss_spike", "warning", 4, 7.0, 6.0)
    # EMA is now 4 + 0.5 x (7 - 4) = 5.5; 9 > 8.25 would be a spike, but the cooldown holds it back.
    assert watch.observe(5, 9.0, 1.0) == []


def test_sustained_divergence_fires_once_and_rearms_after_recovery() -> None:
    # alpha 1: the EMA is the value itself.  Lowest 4 -> bound 1.2 x 4 = 4.8; patience 3.
    watch = LossWatch(WatchSettings(ema_alpha=1.0, warmup_steps=2, divergence_margin=0.2, divergence_patience=3))
    fired = [(step, _reasons(watch.observe(step, loss, 1.0))) for step, loss in
             enumerate([5.0, 4.0, 4.0, 5.0, 5.0, 5.0, 5.0, 4.0, 5.0, 5.0, 5.0], start=1)]
    assert [(s, r) for s, r in fired if r] == [(6, ["divergence"]), (11, ["divergence"])]


def test_grad_norm_explosion_and_non_finite_norm() -> None:
    watch = LossWatch(WatchSettings(ema_alpha=0.5, warmup_steps=2, grad_norm_factor=10.0, cooldown_steps=1))
    for step in (1, 2, 3):
        assert watch.observe(step, 3.0, 1.0) == []
    (alert,) = watch.observe(4, 3.0, 11.0)  # 11 > 10 x 1
    assert (alert.reason, alert.level, alert.value, alert.threshold) == ("grad_norm_explosion", "critical", 11.0, 10.0)
    (alert,) = watch.observe(5, 3.0, math.inf)
    assert alert.reason == "grad_norm_explosion" and alert.value == math.inf


# -- the daemon's watch ------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _running(run_id: str = "r") -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    fold(runs, RunEvent(run_id=run_id, status="started", seq=1, config=RunConfig(steps=100, start="tiny", end="tiny")))
    return runs


def _step(step: int, run_id: str = "r") -> StepEvent:
    return StepEvent(run_id=run_id, step=step, loss=5.0, gradient_norm=1.0, phase="full", was_predicted=False,
                     prediction_error=None, step_time_ms=1.0, stage="tiny", lr=1e-3, tokens=step * 10, tokens_per_s=10.0)


def test_stall_alert_after_k_times_the_median_step_then_once_until_the_next_step() -> None:
    runs, recorded, clock = _running(), [], FakeClock()
    watch = DaemonWatch(runs, recorded.append, lambda run_id: True, stall_factor=5.0, stall_min_s=2.0, clock=clock)
    for step in range(1, 6):  # one step a second: median interval 1 s, bound max(5 x 1, 2) = 5 s
        clock.now = float(step - 1)
        watch.observe(_step(step))
    clock.now = 4.0 + 4.9
    watch.tick()
    assert recorded == []
    clock.now = 4.0 + 5.5
    watch.tick()
    (alert,) = recorded
    assert (alert.reason, alert.source, alert.value, alert.threshold) == ("stall", "daemon", 5.5, 5.0)
    clock.now = 100.0
    watch.tick()
    assert len(recorded) == 1  # one alert per stall
    # The ETA at the median pace: (100 total - 0 folded) x 1 s (runs was not folded with steps here).
    assert watch.eta_seconds(runs["r"]) == 100.0


def test_no_stall_alert_for_a_paused_run_or_one_without_worker() -> None:
    runs, recorded, clock = _running(), [], FakeClock()
    alive = {"r": False}
    watch = DaemonWatch(runs, recorded.append, lambda run_id: alive[run_id], stall_factor=2.0, stall_min_s=1.0, clock=clock)
    for step in range(1, 6):
        clock.now = float(step)
        watch.observe(_step(step))
    clock.now = 50.0
    watch.tick()
    assert recorded == []  # no worker: the daemon reports that (lost worker), not a stall
    alive["r"] = True
    runs["r"].status = "paused"
    watch.tick()
    assert recorded == []


def test_replayed_monitoring_events_are_recognised() -> None:
    state = RunState(run_id="r", run_name="r", eval_step=10, sample_step=8)
    assert is_monitoring_replay(state, EvalEvent(step=10, stage="tiny", loss=1.0, perplexity=math.e))
    assert not is_monitoring_replay(state, EvalEvent(step=12, stage="tiny", loss=1.0, perplexity=math.e))
    assert is_monitoring_replay(state, SampleEvent(step=8, stage="tiny"))
    fold({"r": state}, AlertEvent(run_id="r", level="warning", reason="loss_spike", step=7, seq=5))
    assert is_monitoring_replay(state, AlertEvent(level="warning", reason="loss_spike", step=7))
    assert is_monitoring_replay(state, AlertEvent(level="warning", reason="loss_spike", step=6))
    assert not is_monitoring_replay(state, AlertEvent(level="critical", reason="grad_norm_explosion", step=7))


def test_alert_fold_keeps_the_newest_alerts_and_counts_all() -> None:
    runs = _running()
    for i in range(MAX_ALERTS + 5):
        fold(runs, AlertEvent(run_id="r", level="warning", reason="loss_spike", step=i, seq=10 + i))
    fold(runs, EvalEvent(run_id="r", step=30, stage="tiny", loss=2.0, perplexity=7.389, seq=100))
    state = runs["r"]
    assert state.alert_count == MAX_ALERTS + 5
    assert [a.step for a in state.alerts] == list(range(5, MAX_ALERTS + 5))
    assert (state.eval_loss, state.eval_perplexity, state.eval_step) == (2.0, 7.389, 30)


# -- --on-alert ----------------------------------------------------------------------------------------
def test_alert_hook_gets_json_on_stdin_and_a_hanging_hook_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"

    async def main() -> None:
        hook = AlertHook(f"cat >> {out}")
        for step in (3, 4, 5):
            hook.notify(AlertEvent(run_id="r", level="critical", reason="divergence", step=step, seq=step))
        await hook.close()
        # A hook that never ends: killed (with what it started) after its timeout, never awaited by notify.
        marker = tmp_path / "too-late"
        slow = AlertHook(f"sleep 30; touch {marker}", timeout_s=0.5)
        slow.notify(AlertEvent(run_id="r", level="warning", reason="stall", step=1))
        assert slow.running == 1  # started in the background: notify returned at once
        await slow.close()
        assert slow.running == 0 and not marker.exists()

    asyncio.run(main())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["step"] for line in lines) == [3, 4, 5]
    assert {line["kind"] for line in lines} == {"alert"} and {line["reason"] for line in lines} == {"divergence"}


# -- parsing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("9464", ("127.0.0.1", 9464)), (":0", ("127.0.0.1", 0)), ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)), ("localhost:80", ("localhost", 80)),
])
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "1.2.3.4:70000", "a:b", "http://x:1"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(ValueError, match="--metrics expects HOST:PORT"):
        parse_address(text)


def test_kinds_and_prompts(tmp_path: Path) -> None:
    assert parse_kinds("alert, eval") == {"alert", "eval"}
    with pytest.raises(Exception, match="unknown event kind 'nope'"):
        parse_kinds("eval,nope")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Once upon a time\n\n  The end  \n")
    assert read_prompts(prompts) == ["Once upon a time", "  The end"]
    prompts.write_text("\n".join(f"p{i}" for i in range(9)))
    with pytest.raises(ValueError, match="needs 1 to 8 prompts"):
        read_prompts(prompts)


def test_record_lines_decode_back_to_events() -> None:
    event = SampleEvent(seq=9, run_id="r", ts=12.5, step=4, stage="tiny", max_new_tokens=3,
                        samples=[Sample(prompt="a", greedy="b", sampled="c", seed=1, temperature=0.8, top_k=5)])
    record = monitoring_record(event)
    assert set(record) == {"step", "stage", "samples", "max_new_tokens", "elapsed_ms", "ts"}
    back = msgspec.json.decode(msgspec.json.encode(record), type=SampleEvent)
    assert back.samples == event.samples and back.step == 4 and back.ts == 12.5


# -- eval and sampling on a real model ----------------------------------------------------------------
def test_heldout_loss_and_seeded_sampling_leave_training_state_alone() -> None:
    from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
    from tritter.daemon.engine.monitoring import continue_prompt, heldout_loss
    from tritter.recipe.presets import get_preset

    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    model.train()
    x = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(2))
    rng = torch.get_rng_state()
    loss, tokens = heldout_loss(model, [(x, y), (x, y)], torch.device("cpu"))
    with torch.no_grad():
        direct = float(torch.nn.functional.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()))
    assert loss == pytest.approx(direct, rel=1e-5) and tokens == 64
    runs = [continue_prompt(model, [5, 6, 7], 6, 128, torch.device("cpu"), torch.Generator().manual_seed(9), 0.8, 50)
            for _ in range(2)]
    assert runs[0] == runs[1]  # same seed, same draw
    greedy, sampled = runs[0]
    assert len(greedy) == len(sampled) == 6
    with torch.no_grad():  # the first greedy token is the argmax after the prompt
        assert greedy[0] == int(model(torch.tensor([[5, 6, 7]]))[0, -1].argmax())
    assert model.training and torch.equal(torch.get_rng_state(), rng)


# -- system stats ------------------------------------------------------------------------------------
def test_system_sample_on_cpu_has_process_and_host_memory_and_no_gpus() -> None:
    import psutil

    from tritter.daemon.engine.sysstats import SystemSampler

    sample = SystemSampler().sample(7)
    assert sample.step == 7 and sample.gpus == [] and sample.cpu_percent >= 0
    assert 0 < sample.rss_bytes < sample.host_memory_total_bytes == psutil.virtual_memory().total


@requires_gpu
def test_system_sample_reads_the_runs_gpu_through_nvml() -> None:
    from tritter.daemon.engine.monitoring import gpu_ids
    from tritter.daemon.engine.sysstats import SystemSampler

    device = torch.device("cuda", 0)
    held = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB the GPU must report as used
    sampler = SystemSampler(gpu_ids(device, 1))
    (gpu,) = sampler.sample(1).gpus
    sampler.close()
    total = torch.cuda.get_device_properties(0).total_memory  # CUDA's count; NVML may keep back a reserve
    assert gpu.name and gpu.memory_total_bytes is not None and abs(gpu.memory_total_bytes - total) < 0.05 * total
    assert gpu.memory_used_bytes is not None and gpu.memory_used_bytes >= held.numel()
    assert gpu.utilization_pct is not None and 0 <= gpu.utilization_pct <= 100
