"""Fused LSE attention vs the materialised reference, and the custom autograd itself."""

from __future__ import annotations

import pytest
import torch

from inducer.core.kernels import _FusedAttentionWithLSE, additive_mask, fused_attention, reference_attention


def _inputs(heads=4, kv_heads=4, n=6, m=6, p=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, p, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(2, kv_heads, m, p, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(2, kv_heads, m, p, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _padding_mask(m: int) -> torch.Tensor:
    keep = torch.ones(2, 1, 1, m, dtype=torch.bool)
    keep[1, ..., m - 2:] = False
    return keep


@pytest.mark.parametrize("case", ["none", "padding", "causal", "gqa", "bias"])
def test_fused_matches_reference_forward_and_grad(case):
    heads, kv_heads = (6, 2) if case == "gqa" else (4, 4)
    q, k, v = _inputs(heads, kv_heads)
    bool_mask = _padding_mask(6) if case in ("padding", "gqa", "bias") else None
    bias = torch.randn(1, heads, 6, 6, dtype=torch.float64) if case == "bias" else None
    causal = case == "causal"
    ref_mask = additive_mask(bool_mask, bias, q, 6, is_causal=causal)
    out_r, lse_r, _ = reference_attention(q, k, v, ref_mask, 0.37, 0.0, False)
    if bias is None:
        fused_mask = additive_mask(bool_mask, None, q, 6, is_causal=False)
        out_f, lse_f = fused_attention(q, k, v, fused_mask, 0.37, 0.0, False, causal)
    else:
        out_f, lse_f = fused_attention(q, k, v, ref_mask, 0.37, 0.0, False, False)
    torch.testing.assert_close(out_f, out_r)
    torch.testing.assert_close(lse_f, lse_r)
    # A loss that uses both outputs, so the LSE gradient path is exercised.
    w = torch.randn_like(lse_r)
    grads_r = torch.autograd.grad((out_r**2).sum() + (lse_r * w).sum(), (q, k, v))
    grads_f = torch.autograd.grad((out_f**2).sum() + (lse_f * w).sum(), (q, k, v))
    for gr, gf in zip(grads_r, grads_f, strict=True):
        torch.testing.assert_close(gf, gr)


def test_lse_gradient_matches_autograd_through_scores():
    q, k, v = _inputs(n=4, m=7)
    mask = additive_mask(_padding_mask(7), None, q, 7, is_causal=False)
    _, lse = _FusedAttentionWithLSE.apply(q, k, v, mask, 0.5, False, 0.0)
    expected = torch.logsumexp(q @ k.transpose(-1, -2) * 0.5 + mask, -1)
    torch.testing.assert_close(lse, expected)
    gq, gk = torch.autograd.grad(lse.sum(), (q, k))
    eq, ek = torch.autograd.grad(expected.sum(), (q, k))
    torch.testing.assert_close(gq, eq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gk, ek, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_custom_autograd(causal):
    q, k, v = _inputs(heads=2, kv_heads=2, n=3, m=3, p=3)
    mask = None if causal else additive_mask(_padding_mask(3), None, q, 3, is_causal=False)

    def fn(q, k, v):
        return _FusedAttentionWithLSE.apply(q, k, v, mask, 0.7, causal, 0.0)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_fully_masked_rows_stay_finite():
    q, k, v = _inputs(n=3, m=4)
    keep = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    keep[0] = True
    mask = additive_mask(keep, None, q, 4, is_causal=False)
    for out, lse in (fused_attention(q, k, v, mask, 0.5, 0.0, False, False),
                     reference_attention(q, k, v, mask, 0.5, 0.0, False)[:2]):
        grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)


def test_cpu_dropout_path_keeps_exact_lse():
    q, k, v = _inputs()
    torch.manual_seed(0)
    out, lse = fused_attention(q, k, v, None, 0.4, 0.5, True, False)
    expected = torch.logsumexp(q @ k.transpose(-1, -2) * 0.4, -1)
    torch.testing.assert_close(lse, expected)
    reference_out = reference_attention(q, k, v, None, 0.4, 0.0, False)[0]
    assert not torch.allclose(out, reference_out)  # dropout did act on the output


def test_backward_without_lse_gradient_is_the_plain_kernel_backward():
    q, k, v = _inputs()
    out, _ = _FusedAttentionWithLSE.apply(q, k, v, None, 0.4, True, 0.0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.4)
    got = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    want = torch.autograd.grad(expected.pow(2).sum(), (q, k, v))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("keys", [16, 37])
def test_cuda_bias_layout(keys):
    """What the CUDA memory-efficient kernel demands of its bias (found on a GPU): the full
    (B, H, N, M) shape, unit stride along keys, rows starting 16-aligned; values unchanged."""
    from inducer.core.kernels import _aligned_bias

    query = torch.zeros(2, 4, 5, 8)
    key = torch.zeros(2, 4, keys, 8)
    # A (1, H, N, M) bias broadcast along keys, like T5's position bias: stride 0 on the last dim.
    mask = torch.randn(1, 4, 5, 1).expand(1, 4, 5, keys)
    bias = _aligned_bias(mask, query, key)
    assert bias.shape == (2, 4, 5, keys)
    assert bias.stride(-1) == 1 and bias.stride(-2) % 16 == 0
    torch.testing.assert_close(bias, mask.expand(2, 4, 5, keys), rtol=0, atol=0)
    assert _aligned_bias(None, query, key) is None
