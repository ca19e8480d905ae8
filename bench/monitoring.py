"""Cost of periodic eval and samples relative to training, at each preset's default cadence.

Side by side in one process, interleaved so machine load hits both alike: ``--rounds`` times,
``--steps`` full training steps (forward, backward, AdamW; the preset's batch and sequence length)
then one periodic eval over the run's fixed held-out set and one sample event (the default
prompts, greedy + sampled, 32 new tokens).  The fractions are per-step medians:

    eval overhead   = t_eval   / (eval_every   x t_step)
    sample overhead = t_sample / (sample_every x t_step)

Full steps are the dearest kind; hybrid predicted steps (forward only) are cheaper, so a hybrid
run's fraction is up to that much higher during Predict (both figures are printed).

    .venv/bin/python bench/monitoring.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tritter.daemon.engine.data import heldout_batches, load_token_data, load_tokenizer
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.daemon.engine.monitoring import DEFAULT_PROMPTS, SAMPLE_EVERY_FACTOR, MonitorSettings, RunMonitor
from tritter.daemon.engine.trainer import EVAL_BATCH_SIZE, EVAL_BATCHES, make_optimizer
from tritter.recipe.presets import get_preset


class _Host:
    def __init__(self, model: torch.nn.Module, batches: list, context: int) -> None:
        self.model, self.device, self.context = model, torch.device("cpu"), context
        self.tokenizer = load_tokenizer()
        self._batches = batches

    def emit(self, event: object) -> None:
        pass

    def heldout(self) -> list:
        return self._batches


def measure(preset_name: str, rounds: int, steps: int, cache: Path | None) -> dict[str, float | str | int]:
    preset = get_preset(preset_name)
    data = load_token_data(cache, None)
    model = LlamaForCausalLM(preset.shape)
    init_weights(model, torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, preset)
    batches = heldout_batches(data, EVAL_BATCH_SIZE, preset.train.seq_len, EVAL_BATCHES)
    every = preset.train.eval_every
    monitor = RunMonitor(_Host(model, batches, preset.train.seq_len),
                         MonitorSettings(eval_every=every, sample_every=SAMPLE_EVERY_FACTOR * every, prompts=DEFAULT_PROMPTS))
    g = torch.Generator().manual_seed(1)
    seq, batch = preset.train.seq_len, preset.train.batch_size
    step_s, eval_s, sample_s = [], [], []
    for _ in range(rounds):
        for _ in range(steps):
            x = torch.randint(0, preset.shape.vocab_size, (batch, seq), generator=g)
            started = time.perf_counter()
            loss = model(x, labels=x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        monitor.evaluate(1, preset_name)
        eval_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        monitor.sample(1, preset_name)
        sample_s.append(time.perf_counter() - started)
    t_step, t_eval, t_sample = statistics.median(step_s), statistics.median(eval_s), statistics.median(sample_s)
    return {
        "preset": preset_name, "eval_every": every, "sample_every": SAMPLE_EVERY_FACTOR * every,
        "step_s": round(t_step, 4), "eval_s": round(t_eval, 4), "sample_s": round(t_sample, 4),
        "eval_overhead": round(t_eval / (every * t_step), 4),
        "sample_overhead": round(t_sample / (SAMPLE_EVERY_FACTOR * every * t_step), 4),
        "heldout_tokens": sum(int(y.numel()) for _, y in batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 steps")
    parser.add_argument("--cache", type=Path, help="token cache folder (default: none)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        args.rounds, args.steps = 3, 5
    results = []
    for name in args.presets.split(","):
        results.append(r := measure(name, args.rounds, args.steps, args.cache))
        print(f"{r['preset']:<6} step {r['step_s'] * 1000:.0f} ms · eval {r['eval_s'] * 1000:.0f} ms every {r['eval_every']} "
              f"-> {r['eval_overhead']:.1%} · sample {r['sample_s'] * 1000:.0f} ms every {r['sample_every']} "
              f"-> {r['sample_overhead']:.1%}", flush=True)
    if args.json:
        print(json.dumps({"results": results, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
