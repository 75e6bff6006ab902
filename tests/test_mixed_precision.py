"""Half precision and autocast: every family, both attention paths, forward and backward.

Stated tolerance: bf16 (and fp16) logits are within 5% of the float32 logits' largest magnitude, and
the adapters' gradients point the same way as in float32 (cosine similarity > 0.99). Adapter tensors
stay float32 on a half-precision base (PEFT's ``autocast_adapter_dtype``) and are cast at use.
"""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.runtime.adapter import adapter_state

from .conftest import DECODERS, FAMILIES, make_batch, make_model
from .integrations.common import perturb

METHODS = {
    "inducer": lambda: [inducer.InducerConfig(r_k=2, r_v=4)],
    "lora": lambda: [inducer.LoRAConfig(r=2)],
    "prefix": lambda: [inducer.PrefixConfig(length=3)],
    "adapter": lambda: [inducer.AdapterConfig()],
    "kernel-mix": lambda: [inducer.KernelMixConfig(r=2)],
    "bitfit": lambda: [inducer.BitFitConfig()],
}
LOGIT_TOLERANCE = 0.05  # of the float32 logits' largest magnitude
GRADIENT_COSINE = 0.99


def _run(family: str, method: str, attn: str, dtype: torch.dtype | None, autocast: bool = False):
    """Logits (float32) and the adapters' gradients, flattened, for one precision setting."""
    model = make_model(family, attn)
    if dtype is not None:
        model = model.to(dtype)
    inducer.attach(model, METHODS[method](), train_head=False)
    perturb(model, seed=3, scale=0.05)  # the comparison then tests the update too
    batch = make_batch(family)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(**batch).logits
    mask = batch["attention_mask"].bool() if family in DECODERS else None
    loss = (logits[mask] if mask is not None else logits).float().square().mean()
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
    return model, logits.float().detach(), grads


def _assert_close_to_float32(family, method, attn, dtype=None, autocast=False) -> None:
    _, reference, ref_grads = _run(family, method, attn, None)
    _, logits, grads = _run(family, method, attn, dtype, autocast)
    assert torch.isfinite(logits).all() and torch.isfinite(grads).all()
    error = (logits - reference).abs().max() / reference.abs().max()
    assert error < LOGIT_TOLERANCE, f"{family}/{method}/{attn}: logits off by {error:.3f} of their scale"
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0)
    assert cosine > GRADIENT_COSINE, f"{family}/{method}/{attn}: gradient cosine {cosine:.4f}"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_inducer_in_bf16_matches_float32(family, attn):
    _assert_close_to_float32(family, "inducer", attn, torch.bfloat16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_inducer_under_cpu_autocast_matches_float32(family, attn):
    # Llama under autocast hands attention float32 queries/keys and bf16 values (the crash).
    _assert_close_to_float32(family, "inducer", attn, autocast=True)


# BitFit adds zero biases to Llama and T5, which have none.
METHOD_FAMILIES = [(f, m) for f in ("bert", "gpt2", "llama", "t5") for m in sorted(METHODS)]


@pytest.mark.parametrize(("family", "method"), METHOD_FAMILIES)
def test_every_method_in_bf16_matches_float32(family, method):
    _assert_close_to_float32(family, method, "sdpa", torch.bfloat16)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_in_fp16_matches_float32(method):
    _assert_close_to_float32("gpt2", method, "sdpa", torch.float16)


@pytest.mark.parametrize("method", ["inducer", "lora", "prefix", "adapter", "kernel-mix"])
def test_added_tensors_are_float32_on_a_half_precision_base(method):
    model = make_model("llama").to(torch.bfloat16)
    inducer.attach(model, METHODS[method]())
    state = adapter_state(model)
    added = [p for name in state.added for p in model.get_submodule(name).parameters()]
    assert added and all(p.dtype == torch.float32 for p in added)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # the base is untouched


def test_a_bf16_adapter_saves_and_loads_bit_identically(tmp_path):
    model, logits, _ = _run("llama", "inducer", "sdpa", torch.bfloat16)
    inducer.save_adapter(model, tmp_path)
    loaded = inducer.load_adapter(make_model("llama").to(torch.bfloat16), tmp_path)
    with torch.no_grad():
        again = loaded(**make_batch("llama")).logits.float()
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_fused_attention_takes_mixed_dtypes():
    from inducer.core.kernels import fused_attention, reference_attention

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 5, 8, generator=g).to(torch.bfloat16)
    out, lse = fused_attention(q, k, v, None, 8 ** -0.5, 0.0, False, True)
    causal = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)[None, None]
    ref_out, ref_lse, _ = reference_attention(q, k, v, causal, 8 ** -0.5, 0.0, False)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-4)
