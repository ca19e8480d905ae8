"""Gradient accumulation: micro-batches add up to the global batch (in the step function, in the
trainer, and under DDP with no_sync), exact resume with accumulation, and token budgets."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tritter.daemon.engine import accumulation
from tritter.daemon.engine import trainer as trainer_module
from tritter.daemon.engine.hybrid import HybridSettings
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.daemon.engine.trainer import Trainer
from tritter.protocol.config import RunConfig
from tritter.protocol.events import StageEvent, StepEvent
from tritter.recipe.planner import flops_per_token
from tritter.recipe.presets import ModelShape, Preset, TrainSettings

SHAPE = ModelShape(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128)
SEQ = 16
MICRO = {
    "tiny": Preset("tiny", SHAPE, TrainSettings(batch_size=2, seq_len=SEQ, lr=3e-3, warmup_steps=2, eval_every=10, checkpoint_every=1000)),
    "small": Preset(
        "small",
        ModelShape(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256),
        TrainSettings(batch_size=2, seq_len=SEQ, lr=2e-3, warmup_steps=2, eval_every=10, checkpoint_every=1000),
    ),
}
FAST = HybridSettings(history=4, order=2, full_steps=1, predict_run=2, true_run=2, correct_steps=3, max_error=10.0, loss_tolerance=10.0)


@pytest.fixture(autouse=True)
def micro_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "get_preset", lambda name: MICRO[name])
    monkeypatch.setattr(trainer_module, "EVAL_BATCHES", 2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


def _model(seed: int = 0) -> LlamaForCausalLM:
    model = LlamaForCausalLM(dataclasses.replace(SHAPE, vocab_size=512))
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def _batch(rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 512, (rows, SEQ + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def test_four_micro_batches_of_four_equal_one_batch_of_sixteen() -> None:
    """CPU, fp32, same data order: loss and accumulated gradient are the big batch's within 1e-5,
    and so is an SGD step on them.  (AdamW's first step, ~lr * sign(g), would turn rounding noise
    in near-zero gradient entries into +-lr differences, which says nothing about accumulation.)"""
    x, y = _batch(16)
    results = []
    for micro in (4, 16):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = accumulation.forward_backward(model, accumulation.split(x, y, micro), torch.device("cpu"))
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        optimizer.step()
        results.append((float(loss), grads, [p.detach().clone() for p in model.parameters()]))
    (loss4, grads4, weights4), (loss16, grads16, weights16) = results
    assert abs(loss4 - loss16) <= 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(grads4, grads16)) <= 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(weights4, weights16)) <= 1e-5
    assert any(float(g.abs().max()) > 1e-3 for g in grads16)  # the comparison is not between zeros


def run(run_dir: Path, cache: Path, *, steps: int = 6, hybrid: bool = False, stop_at: int | None = None,
        **config: Any) -> tuple[list, Trainer]:
    events: list = []

    made: list[Trainer] = []  # the trainer polls while it is still being built (data preparation)

    class Controls:
        def poll(self) -> str | None:
            return "stop" if stop_at is not None and made and made[0].progress.step == stop_at else None

        def wait(self) -> str:
            raise AssertionError("never paused here")

    full = RunConfig(start="tiny", end="tiny", steps=steps, seed=5, hybrid=hybrid, checkpoint_every=4, **config)
    trainer = Trainer("acc", full, run_dir, events.append, Controls(), cache, hybrid_settings=FAST)
    made.append(trainer)
    trainer.run()
    return events, trainer


def steps_of(events: list) -> list[StepEvent]:
    return [e for e in events if isinstance(e, StepEvent)]


def test_trainer_accumulation_matches_one_big_batch(tmp_path: Path, cache: Path) -> None:
    big, _ = run(tmp_path / "big", cache, batch_tokens=16 * SEQ, micro_batch=16)
    acc, _ = run(tmp_path / "acc", cache, batch_tokens=16 * SEQ, micro_batch=4)
    started = next(e for e in acc if isinstance(e, StageEvent) and e.status == "started")
    assert (started.micro_batch, started.accum_steps, started.tokens_per_step, started.steps) == (4, 4, 16 * SEQ, 6)
    a, b = steps_of(big), steps_of(acc)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x.loss - y.loss) <= 1e-5 and abs(x.gradient_norm - y.gradient_norm) <= 1e-5
        assert x.tokens == y.tokens
    assert b[-1].tokens == 6 * 16 * SEQ  # tokens count the global batch of every optimizer step


def test_resume_with_accumulation_and_hybrid_is_exact(tmp_path: Path, cache: Path) -> None:
    settings: dict[str, Any] = dict(batch_tokens=8 * SEQ, micro_batch=2, hybrid=True, steps=12)
    reference, _ = run(tmp_path / "ref", cache, **settings)
    ref = steps_of(reference)
    assert sum(s.was_predicted for s in ref) >= 2  # predicted steps run their forward over 4 micro-batches
    first, _ = run(tmp_path / "run", cache, stop_at=7, **settings)
    second, resumed = run(tmp_path / "run", cache, **settings)
    assert (resumed.progress.micro_batch, resumed.progress.accum) == (2, 4)
    got = steps_of(first) + steps_of(second)
    assert [s.step for s in got] == list(range(1, 13))
    assert [(s.loss, s.was_predicted, s.prediction_error) for s in got] == [
        (s.loss, s.was_predicted, s.prediction_error) for s in ref
    ]


def test_token_budget_sets_the_stage_length(tmp_path: Path, cache: Path) -> None:
    budget = 5 * 4 * SEQ + 1  # five steps of 4 sequences and one token more: six steps
    events, _ = run(tmp_path, cache, tokens=[budget], batch_tokens=4 * SEQ)
    started = next(e for e in events if isinstance(e, StageEvent) and e.status == "started")
    assert started.steps == math.ceil(budget / (4 * SEQ)) == 6
    steps = steps_of(events)
    assert len(steps) == 6 and steps[-1].tokens >= budget


def test_lr_override_sets_the_peak(tmp_path: Path, cache: Path) -> None:
    events, _ = run(tmp_path, cache, lr=5e-4)
    assert max(s.lr for s in steps_of(events)) == pytest.approx(5e-4)


# --- DDP: no_sync on all but the last micro-batch ------------------------------------------------


def _ddp_rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        reductions = []

        def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
            # Reduce synchronously and hand DDP a finished future: torch's allreduce_hook chains a
            # Python callback that gloo's worker thread disposes of under the GIL, and tearing the
            # Reducer down while it does deadlocks (seen here: the rank never exits).
            reductions.append(bucket.index())
            buffer = bucket.buffer().div_(dist.get_world_size())
            dist.all_reduce(buffer)
            done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
            done.set_result(buffer)
            return done

        model.register_comm_hook(None, counting_hook)
        x, y = _batch(16)
        mine = slice(rank * 8, (rank + 1) * 8)  # this rank's half of the global batch
        accumulation.forward_backward(model, accumulation.split(x[mine], y[mine], 2), torch.device("cpu"))
        grads = [p.grad for p in model.module.parameters()]
        torch.save({"reductions": reductions, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks' results are on disk
    except BaseException:
        dist.destroy_process_group()
        raise
    # Exit without tearing DDP down: freeing the Reducer joins gloo's threads while holding the
    # GIL, and a thread that still needs it deadlocks the rank at exit (seen: 1 run in ~10).
    os._exit(0)


def test_ddp_all_reduces_once_per_step_and_matches_the_global_batch(tmp_path: Path) -> None:
    """2 gloo ranks x 4 micro-batches of 2: gradients are all-reduced in one backward only (the
    last micro-batch's), and equal the single-process gradient of all 16 sequences within 1e-5."""
    ranks_running = mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    try:
        while not ranks_running.join(timeout=1):
            assert time.monotonic() < deadline, "the gloo ranks did not finish in 180 s"
    finally:  # never leave a rank behind (a non-daemonic child would hold pytest's exit)
        for process in ranks_running.processes:
            if process.is_alive():
                process.kill()
                process.join()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model = _model()
    x, y = _batch(16)
    accumulation.forward_backward(model, [(x, y)], torch.device("cpu"))
    for got in ranks:
        buckets = got["reductions"]
        assert buckets and len(buckets) == len(set(buckets))  # each bucket reduced once: one synced backward
        for mine, expected in zip(got["grads"], model.parameters()):
            assert float((mine - expected.grad).abs().max()) <= 1e-5


def test_the_cuda_probe_measures_with_the_stages_gradient_checkpointing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe sizes the micro-batch for the configuration that trains: with the stage's
    gradient checkpointing set (the field run measured a 500m probe without it). The CUDA calls
    are replaced by a memory model that depends on the checkpointing, so this runs on CPU."""
    model = LlamaForCausalLM(SHAPE)
    seen: list[tuple[int, int]] = []
    per_sequence = {0: 10 * 2**30, 1: 4 * 2**30}  # bytes per sequence without / with checkpointing

    def fake_peak(probed: Any, micro: int, seq_len: int, vocab: int, device: torch.device) -> int | None:
        seen.append((micro, probed.grad_ckpt_every))
        return micro * per_sequence[min(probed.grad_ckpt_every, 1)]

    monkeypatch.setattr(accumulation, "_peak_bytes", fake_peak)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: type("P", (), {"total_memory": 80 * 2**30})())
    cuda = torch.device("cuda", 0)  # only its type is read before the (faked) measurements
    # 72 GiB usable: 7 sequences at 10 GiB each without checkpointing, 16 (all rows) at 4 GiB with it.
    assert accumulation.probe_micro_batch(model, SEQ, 256, 16, 16, cuda, grad_ckpt_every=0) == 4
    assert accumulation.probe_micro_batch(model, SEQ, 256, 16, 16, cuda, grad_ckpt_every=2) == 16
    assert seen[-1] == (16, 2) and model.grad_ckpt_every == 2
    assert {every for _, every in seen[:-1]} == {0}


def test_steps_report_mfu_against_the_gpus_peak(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MFU on every step: tokens/s x training FLOPs per token / peak, a third of the FLOPs on a
    predicted (forward-only) step; None where the peak is unknown (CPU without the override)."""
    plain, _ = run(tmp_path / "cpu", cache, steps=4)
    assert all(s.mfu is None for s in steps_of(plain))
    monkeypatch.setenv("TRITTER_PEAK_TFLOPS", "0.5")  # as if this CPU were a 0.5 TFLOP/s GPU
    events, trainer = run(tmp_path / "peak", cache, batch_tokens=8 * SEQ, micro_batch=2, hybrid=True, steps=12)
    steps = steps_of(events)
    per_token = flops_per_token(trainer.preset.shape, SEQ)  # the shape with the run's vocabulary
    assert any(s.was_predicted for s in steps) and not all(s.was_predicted for s in steps)
    for s in steps:
        work = per_token / 3 if s.was_predicted else per_token
        assert s.mfu == pytest.approx(s.tokens_per_s * work / 0.5e12, rel=1e-9) and 0 < s.mfu < 1
    monkeypatch.setenv("TRITTER_PEAK_TFLOPS", "fast")
    with pytest.raises(ValueError, match="TRITTER_PEAK_TFLOPS must be a positive number"):
        run(tmp_path / "bad", cache, steps=1)
