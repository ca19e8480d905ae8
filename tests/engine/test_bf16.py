"""The model is bf16-clean under autocast: q, k, v reach attention in bf16, and each norm output
is cast once (not once per projection that reads it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tritter.daemon.engine import model as model_module
from tritter.daemon.engine.model import LlamaForCausalLM, init_weights
from tritter.recipe.presets import get_preset


def _tiny() -> LlamaForCausalLM:
    model = LlamaForCausalLM(get_preset("tiny").shape)
    init_weights(model, torch.Generator().manual_seed(0))
    return model


def test_qkv_reach_attention_in_bf16(monkeypatch) -> None:
    seen: list[tuple[torch.dtype, ...]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    model = _tiny()
    ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids)
    assert len(seen) == model.shape.num_layers
    assert all(dtypes == (torch.bfloat16,) * 3 for dtypes in seen), seen
    assert loss.dtype == torch.float32  # the loss stays fp32


class _CastCounter(TorchDispatchMode):
    """Counts fp32 → bf16 conversions of (B, T, C) activations."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        src = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(src, torch.Tensor)
            and src.dtype == torch.float32
            and kwargs.get("dtype") == torch.bfloat16
            and src.dim() == 3
            and src.shape[-1] == self.hidden
        ):
            self.casts += 1
        return out


def test_one_cast_per_norm_output() -> None:
    model = _tiny()
    ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    counter = _CastCounter(model.shape.hidden_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), counter:
        model(ids)
    # Two norms per block plus the final norm; nothing else casts a (B, T, C) fp32 activation.
    assert counter.casts == 2 * model.shape.num_layers + 1


def test_fp32_forward_unchanged_without_autocast() -> None:
    model = _tiny()
    ids = torch.randint(0, model.shape.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3))
    logits = model(ids)
    assert logits.dtype == torch.float32
