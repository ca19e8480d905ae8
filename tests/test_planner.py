"""recipe/planner.py against the real modules: parameters and state bytes on torch's meta device,
the hybrid predictor's buffers on a real model, and the activation bytes autograd saves."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tritter.daemon.engine.hybrid import HybridController
from tritter.daemon.engine.model import LlamaForCausalLM
from tritter.daemon.engine.trainer import make_optimizer
from tritter.protocol.config import PRESET_NAMES
from tritter.recipe.budget import BatchPlan
from tritter.recipe.planner import flops_per_token, parameter_count, plan_run, plan_stage
from tritter.recipe.presets import get_preset


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[id(storage) if t.device.type == "meta" else storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_parameter_and_state_bytes_match_the_real_modules(name: str) -> None:
    preset = get_preset(name)
    with torch.device("meta"):
        model = LlamaForCausalLM(preset.shape)
    params = list(model.parameters())
    plan = plan_stage(preset, cuda=False, batch=BatchPlan(micro_batch=1, accum=1, world=1, seq_len=16),
                      grad_ckpt_every=0, hybrid=False)
    assert plan.params == sum(p.numel() for p in params)
    assert plan.weights_bytes == sum(p.numel() * p.element_size() for p in params)
    for p in params:
        p.grad = torch.zeros_like(p)
    assert plan.grads_bytes == sum(p.grad.numel() * p.grad.element_size() for p in params)
    optimizer = make_optimizer(model, preset)
    optimizer.step()  # AdamW allocates its state on the first step (meta: shapes only)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert plan.optimizer_bytes == sum(v.numel() * v.element_size() for v in state)


def _tensors_held(obj: object, seen_objs: set[int], out: list[torch.Tensor]) -> None:
    """Every tensor reachable from ``obj``'s attributes, lists and dicts (not through modules)."""
    if id(obj) in seen_objs or isinstance(obj, torch.nn.Module):
        return
    seen_objs.add(id(obj))
    if torch.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors_held(value, seen_objs, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors_held(value, seen_objs, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for value in vars(obj).values():
            _tensors_held(value, seen_objs, out)


def test_hybrid_bytes_match_the_controller_buffers() -> None:
    """Drive the controller through enough true steps to fill its history (predicted ones too),
    then count every tensor it holds besides the model's parameters and AdamW's state."""
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = LlamaForCausalLM(preset.shape)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    optimizer = make_optimizer(model, preset)
    controller = HybridController(model, optimizer)
    x = torch.randint(0, preset.shape.vocab_size, (2, 16))
    for step in range(controller.settings.history + controller.settings.full_steps + 4):
        plan = controller.before_step(step, 0)
        norm = None
        if plan.predicted:
            with torch.no_grad():
                loss = model(x, labels=x)
        else:
            loss = model(x, labels=x)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        controller.after_step(plan, float(loss.detach()), 1e-3, norm)
    held: list[torch.Tensor] = []
    _tensors_held(controller, set(), held)
    others = {p.untyped_storage().data_ptr() for p in model.parameters()}
    others |= {v.untyped_storage().data_ptr() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)}
    buffers = [t for t in held if t.untyped_storage().data_ptr() not in others]
    plan = plan_stage(preset, cuda=False, batch=BatchPlan(micro_batch=1, accum=1, world=1, seq_len=16),
                      grad_ckpt_every=0, hybrid=True)
    assert plan.hybrid_bytes == _storage_bytes(buffers) == 4 * plan.params  # the bound: <= 4 B/param
    assert plan.hybrid_bytes == sum(t.numel() * t.element_size() for t in controller.tensors().values())  # checkpointed


def _saved_activation_bytes(name: str, batch: int, seq: int, bf16: bool, every: int) -> tuple[int, int]:
    """(activation bytes, bf16 weight-cast bytes) that autograd saves for backward in one forward."""
    shape = get_preset(name).shape
    with torch.device("cpu"):
        model = LlamaForCausalLM(shape)
    model.set_grad_checkpointing(every)
    model.train()
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_numels = {p.numel() for p in model.parameters()}
    saved: dict[int, tuple[int, bool]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in own and key not in saved:
            is_cast = t.dtype == torch.bfloat16 and storage.nbytes() // 2 in weight_numels
            saved[key] = (storage.nbytes(), is_cast)
        return t

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, shape.vocab_size, (batch, seq), generator=generator)
    y = torch.randint(0, shape.vocab_size, (batch, seq), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x, labels=y)
    activations = sum(n for n, cast in saved.values() if not cast)
    casts = sum(n for n, cast in saved.values() if cast)
    return activations, casts


@pytest.mark.parametrize(("bf16", "every"), [(True, 0), (True, 4), (False, 0)])
def test_activation_bytes_match_what_autograd_saves_at_the_100m_shape(bf16: bool, every: int) -> None:
    """The per-token activation figure (issue 20 item 5), exact: bf16 autocast on CPU stands in for CUDA."""
    batch, seq = 1, 128
    activations, casts = _saved_activation_bytes("100m", batch, seq, bf16, every)
    plan = plan_stage(get_preset("100m"), cuda=bf16, batch=BatchPlan(micro_batch=batch, accum=1, world=1, seq_len=seq),
                      grad_ckpt_every=every, hybrid=False)
    assert activations == plan.activations_bytes
    assert casts == plan.weight_copies_bytes


def _compiled_saved_bytes(name: str, seq: int, every: int) -> tuple[int, int]:
    """(activation bytes, bf16 weight-cast bytes) that inductor's partition saves for the backward.

    The joint graph goes through inductor's own decompositions and partition function (its
    joint-graph passes + min-cut rematerialisation): the tensors it saves are what a compiled
    training step holds at the start of its backward, on any device.  No kernels are generated.
    """
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table

    torch._dynamo.reset()
    shape = get_preset(name).shape
    model = LlamaForCausalLM(shape)
    model.set_grad_checkpointing(every)
    saved: list = []

    def forward_compiler(gm: torch.fx.GraphModule, _inputs: list) -> object:
        saved.extend(next(n for n in gm.graph.nodes if n.op == "output").args[0][1:])  # [0] is the loss
        return gm.forward

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        return aot_module_simplified(gm, inputs, fw_compiler=forward_compiler, bw_compiler=lambda g, _i: g.forward,
                                     partition_fn=partition_fn, decompositions=select_decomp_table())

    x = torch.randint(0, shape.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(model, backend=backend)(x, labels=x)
    torch._dynamo.reset()
    activations = casts = 0
    for node in saved:
        value = node.meta.get("val")
        if node.op == "placeholder" or not isinstance(value, torch.Tensor):
            continue  # inputs and parameters the graph was given: no new memory
        if seq in value.shape:
            activations += value.numel() * value.element_size()
        elif value.dim() == 2:
            assert value.dtype == torch.bfloat16  # a matmul weight's cast (transposed view)
            casts += value.numel() * value.element_size()
    return activations, casts


@pytest.mark.timeout(600)
@pytest.mark.parametrize("every", [0, 4])
def test_compiled_activation_bytes_match_what_inductor_saves_at_the_100m_shape(every: int) -> None:
    """The compiled count (the default with --cuda): exact without checkpointing, at most 6% above
    with it (the partition keeps a little less than a full fp32 input per checkpointed block)."""
    seq = 128
    activations, casts = _compiled_saved_bytes("100m", seq, every)
    plan = plan_stage(get_preset("100m"), cuda=True, batch=BatchPlan(micro_batch=1, accum=1, world=1, seq_len=seq),
                      grad_ckpt_every=every, hybrid=False, compiled=True)
    assert plan.compiled
    counted = (plan.activation_bytes_per_token - 16) * seq  # less the int64 inputs and labels (graph inputs)
    if every == 0:
        assert counted == activations
    else:
        assert activations <= counted <= 1.06 * activations
    assert casts == plan.weight_copies_bytes
    eager = plan_stage(get_preset("100m"), cuda=True, batch=BatchPlan(micro_batch=1, accum=1, world=1, seq_len=seq),
                       grad_ckpt_every=every, hybrid=False)
    assert plan.peak_bytes < eager.peak_bytes == eager.eager_peak_bytes == plan.eager_peak_bytes


def test_flops_per_token_by_hand() -> None:
    # 100m: N = 98,323,200 (docs/presets.md), 12 layers x 12 heads x 64 dims x 1024 positions.
    shape = get_preset("100m").shape
    assert parameter_count(shape) == 98_323_200
    assert flops_per_token(shape, 1024) == 6 * 98_323_200 + 12 * 12 * 12 * 64 * 1024


def test_plan_run_follows_the_batch_flags() -> None:
    plans = plan_run("100m", "1b", cuda=True, batch_tokens=2**20, micro_batch=4, grad_ckpt_every=1, nproc=2)
    assert [p.stage for p in plans] == ["100m", "500m", "1b"]
    for p in plans:
        assert (p.micro_batch, p.nproc, p.grad_ckpt_every) == (4, 2, 1)
        assert p.tokens_per_step == 2**20 == p.micro_batch * p.accum * p.nproc * p.seq_len
        assert p.activation_dtype == "bf16" and p.compiled  # as the trainer: compiled on CUDA
    fitted = plan_run("1b", "1b", cuda=True)[0]
    # The micro-batch is fitted by the eager peak, which the trainer's probe measures.
    assert fitted.peak_bytes < fitted.eager_peak_bytes <= 0.9 * 80e9
    assert plan_run("1b", "1b", cuda=True, micro_batch=fitted.micro_batch * 2)[0].eager_peak_bytes > 0.9 * 80e9 or \
        fitted.micro_batch * 2 > fitted.tokens_per_step // fitted.seq_len
    eager = plan_run("1b", "1b", cuda=True, compiled=False)[0]
    assert not eager.compiled and eager.peak_bytes == eager.eager_peak_bytes == fitted.eager_peak_bytes
    assert not plan_run("tiny", "tiny", compiled=True)[0].compiled  # the compiled count is CUDA's (bf16)


def test_tritterctl_plan_runs_without_a_daemon(tmp_path) -> None:
    ctl = [sys.executable, "-m", "tritter.clients.ctl", "--home", str(tmp_path / "nothing-here")]
    out = subprocess.run([*ctl, "plan", "--start", "100m", "--end", "1b", "--cuda", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stages = json.loads(out.stdout.strip().splitlines()[-1])["stages"]
    assert [s["stage"] for s in stages] == ["100m", "500m", "1b"]
    assert all(s["peak_bytes"] > s["weights_bytes"] + s["grads_bytes"] + s["optimizer_bytes"] for s in stages)
    table = subprocess.run([*ctl, "plan", "--start", "tiny", "--end", "small"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "peak GiB" in table.stdout and "FLOPs/token" in table.stdout
    assert "peak eager" not in table.stdout  # CPU: nothing is compiled
    eager = subprocess.run([*ctl, "plan", "--start", "100m", "--end", "1b", "--cuda", "--no-compile", "--json"],
                           capture_output=True, text=True, timeout=60)
    eager_stages = json.loads(eager.stdout.strip().splitlines()[-1])["stages"]
    assert all(s["compiled"] for s in stages) and not any(s["compiled"] for s in eager_stages)
    assert [s["peak_bytes"] for s in eager_stages] == [s["eager_peak_bytes"] for s in stages]
    assert all(s["peak_bytes"] < s["eager_peak_bytes"] for s in stages)
    cpu = subprocess.run([*ctl, "plan", "--compile"], capture_output=True, text=True, timeout=60)
    assert cpu.returncode == 2 and cpu.stderr.strip().splitlines() == [
        "tritterctl: error: --compile counts the compiled CUDA step (bf16 autocast): add --cuda"]
    bad = subprocess.run([*ctl, "plan", "--start", "1b", "--end", "tiny"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bigger" in bad.stderr


def test_plan_tokens_gives_each_stage_its_share_of_the_training_flops(tmp_path) -> None:
    ctl = [sys.executable, "-m", "tritter.clients.ctl", "--home", str(tmp_path / "nothing-here")]
    out = subprocess.run([*ctl, "plan", "--start", "100m", "--end", "1b", "--tokens", "12B,3B,1B", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    fpt = [s["flops_per_token"] for s in got["stages"]]
    budget = got["budget"]
    assert [b["tokens"] for b in budget] == [12 * 10**9, 3 * 10**9, 10**9]
    assert [b["flops"] for b in budget] == [t * f for t, f in zip((12e9, 3e9, 1e9), fpt)]
    assert sum(b["share"] for b in budget) == pytest.approx(1.0)
    # By hand at 40% of an H100's 989 TFLOP/s: hours = tokens x FLOPs/token / (0.4 x 989e12) / 3600.
    assert budget[2]["gpu_hours"] == pytest.approx(1e9 * fpt[2] / (0.4 * 989e12) / 3600)
    table = subprocess.run([*ctl, "plan", "--start", "tiny", "--end", "small", "--tokens", "3M,1M"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "share of FLOPs" in table.stdout and "3M" in table.stdout
    steps = subprocess.run([*ctl, "plan", "--start", "tiny", "--end", "small", "--steps", "10", "--json"],
                           capture_output=True, text=True, timeout=60)
    plans = json.loads(steps.stdout)
    assert [b["tokens"] for b in plans["budget"]] == [10 * s["tokens_per_step"] for s in plans["stages"]]
    for bad, why in ((["--tokens", "1M,2M,3M"], "has 3 values but the run has 2 stages"), (["--tokens", "x"], "is not a size")):
        refused = subprocess.run([*ctl, "plan", *bad], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_plan_takes_a_start_command_line_as_it_is_and_sizes_embeddings_by_the_tokenizer(tmp_path) -> None:
    from tritter.clients.ctl import build_parser
    from tritter.formats.tokenizer import train_bpe

    # Every flag of `start` is a flag of `plan`, so a start command can be planned by changing one word.
    sub = next(a for a in build_parser()._actions if a.choices and "start" in a.choices).choices
    flags = lambda name: {s for a in sub[name]._actions for s in a.option_strings}  # noqa: E731
    assert flags("start") - flags("plan") == set()

    tok = tmp_path / "tok"
    tok.mkdir()
    text = [f"line {i} of a corpus, with words {i * 7} and more words" for i in range(400)]
    train_bpe(text, vocab_size=400).save(str(tok / "tokenizer.json"))
    ctl = [sys.executable, "-m", "tritter.clients.ctl", "--home", str(tmp_path / "nothing-here")]
    start_args = ["--start", "tiny", "--end", "small", "--corpus", str(tmp_path), "--name", "x", "--seed", "3",
                  "--steps", "10", "--upload", "--hf-user", "me", "--eval-every", "5", "--json"]
    default = subprocess.run([*ctl, "plan", *start_args], capture_output=True, text=True, timeout=60)
    own = subprocess.run([*ctl, "plan", *start_args, "--tokenizer", str(tok)], capture_output=True, text=True, timeout=60)
    assert default.returncode == 0 and own.returncode == 0, (default.stderr, own.stderr)
    shapes = [get_preset(name).shape for name in ("tiny", "small")]
    # 400 ids -> 448 embedding rows (a multiple of 64); one matrix when input and output are tied.
    want = [p - (1 if s.tie_word_embeddings else 2) * s.hidden_size * (s.vocab_size - 448) for p, s in
            zip((s["params"] for s in json.loads(default.stdout)["stages"]), shapes)]
    assert [s["params"] for s in json.loads(own.stdout)["stages"]] == want
    bad = subprocess.run([*ctl, "plan", "--tokenizer", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_the_plan_printed_in_docs_presets_is_what_the_command_prints() -> None:
    from pathlib import Path

    from tritter.recipe.planner import format_plan

    doc = (Path(__file__).resolve().parents[1] / "docs" / "presets.md").read_text()
    command = "```sh\ntritterctl plan --start 100m --end 1b --cuda\n```\n\n```\n"
    assert command in doc
    shown = doc.split(command, 1)[1].split("\n```", 1)[0]
    assert shown == format_plan(plan_run("100m", "1b", cuda=True))
