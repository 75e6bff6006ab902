"""inducer's attention function: soft-capping and attention sinks exactly as the models define them,
and modules without extensions running the model's own implementation."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gpt_oss import modeling_gpt_oss

import inducer
from inducer.core.kernels import add_sink, fused_attention, reference_attention

from ..sweep.architectures import ARCHITECTURES

B, H, KV, N, M, P = 2, 4, 2, 5, 7, 8


def _tensors(seed: int = 0, grad: bool = False):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, P, generator=generator, dtype=torch.float64)
               for h, n in ((H, N), (KV, M), (KV, M)))
    mask = torch.zeros(B, 1, N, M, dtype=torch.float64)
    mask[1, :, :, -2:] = torch.finfo(torch.float64).min  # the second sequence is padded
    sinks = torch.randn(H, generator=generator, dtype=torch.float64)
    for t in (q, k, v, sinks):
        t.requires_grad_(grad)
    return q, k, v, mask, sinks


def _module(**extra):
    return types.SimpleNamespace(num_key_value_groups=H // KV, training=False, **extra)


def test_reference_soft_capping_is_gemma2s_own():
    q, k, v, mask, _ = _tensors()
    expected, weights = modeling_gemma2.eager_attention_forward(
        _module(), q, k, v, mask, scaling=0.5, softcap=2.0)
    out, lse, probs = reference_attention(q, k, v, mask, 0.5, 0.0, False, softcap=2.0)
    torch.testing.assert_close(out.transpose(1, 2), expected)
    torch.testing.assert_close(probs, weights)
    capped = torch.tanh(q @ inducer.core.kernels.repeat_kv(k, H // KV).transpose(-1, -2) * 0.5 / 2.0) * 2.0
    torch.testing.assert_close(lse, torch.logsumexp(capped + mask, -1))  # λ's normaliser: the model's


def test_reference_sinks_are_gpt_oss_own_and_enter_the_normaliser():
    q, k, v, mask, sinks = _tensors()
    expected, weights = modeling_gpt_oss.eager_attention_forward(_module(sinks=sinks), q, k, v, mask, 0.5)
    out, lse, probs = reference_attention(q, k, v, mask, 0.5, 0.0, False, sinks=sinks)
    torch.testing.assert_close(out.transpose(1, 2), expected)
    torch.testing.assert_close(probs, weights)
    plain = reference_attention(q, k, v, mask, 0.5, 0.0, False)[1]
    torch.testing.assert_close(lse, torch.logaddexp(plain, sinks[None, :, None]))


def test_fused_sinks_combine_the_kernels_lse_with_the_sink_logit_values_and_gradients():
    q, k, v, mask, sinks = _tensors(grad=True)
    results = []
    for fused in (False, True):
        if fused:
            out, lse = add_sink(*fused_attention(q.float(), k.float(), v.float(), mask.float(), 0.5, 0.0,
                                                 False, False), sinks.float())
        else:
            out, lse, _ = reference_attention(q, k, v, mask, 0.5, 0.0, False, sinks=sinks)
        (out.pow(2).sum() + lse.sin().sum()).backward()
        results.append([out.double(), lse.double()] + [t.grad.clone() for t in (q, k, v, sinks)])
        for t in (q, k, v, sinks):
            t.grad = None
    for reference, fused in zip(*results, strict=True):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4)


def _tiny(name: str):
    return next(a for a in ARCHITECTURES if a.name == name).build()


@pytest.mark.parametrize("name", ["Gemma-2", "gpt-oss"])
def test_the_fused_path_never_forces_sdpa_on_a_model_without_it(name):
    """LoRA has no attention extensions: its modules run the model's own (eager) attention on
    either path, sinks and soft-capping included (sdpa would drop gpt-oss's sinks)."""
    base = _tiny(name)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        model = inducer.attach(base, inducer.LoRAConfig(r=2))
        inducer.set_attention_path(model, "fused")
        assert model.config._attn_implementation == "inducer_fused_over_eager"
        assert inducer.attention_path(model) == "fused"
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
        inducer.detach(model)
        assert model.config._attn_implementation == "eager"


def test_inducers_on_soft_capped_attention_take_the_reference_path_and_match_it():
    model = inducer.attach(_tiny("Gemma-2"), inducer.InducerConfig(init_std=0.2))
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    outputs = {}
    with torch.no_grad():
        for path in ("fused", "reference"):
            inducer.set_attention_path(model, path)
            outputs[path] = model(input_ids=ids).logits
    torch.testing.assert_close(outputs["fused"], outputs["reference"], rtol=0, atol=0)


def test_plain_modules_keep_the_models_base_under_either_path():
    base = _tiny("Llama")  # sdpa by default
    inducer.set_attention_path(base, "reference")
    assert base.config._attn_implementation == "inducer_reference_over_sdpa"
    inducer.set_attention_path(base, "fused")
    assert base.config._attn_implementation == "inducer_sdpa"
