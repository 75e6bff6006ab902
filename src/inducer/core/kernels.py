"""Attention that also returns each query's log-sum-exp (LSE) of its masked scores.

Inducer-tuning needs ``lam = sigmoid(s - LSE)``, where LSE is the log-sum-exp over a query's real,
masked attention scores. Two implementations of the same semantics live here:

* :func:`reference_attention` materialises the score matrix. It is the definition in code and is
  used when the model runs transformers' ``eager`` attention.
* :func:`fused_attention` gets LSE from PyTorch's fused kernels (the CPU flash kernel, or the CUDA
  memory-efficient kernel), which compute it anyway but do not differentiate through it.
  :class:`_FusedAttentionWithLSE` supplies that gradient: no (B, H, N, M) tensor is kept.

Both take tensors in transformers' attention-function layout: query (B, H, N, p), key and value
(B, H_kv, M, p), and return ``out`` (B, H, N, p) and ``lse`` (B, H, N) in float32 or wider.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half precisions (softmax statistics need it), else the tensor's own dtype."""
    return torch.promote_types(tensor.dtype, torch.float32)


def common_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The widest dtype of ``tensors`` (None skipped): under autocast, rotary embeddings hand
    attention float32 queries and keys next to half-precision values, and the kernels want one dtype."""
    dtypes = [t.dtype for t in tensors if t is not None]
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return result


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``, without a call when it already is (cached decoding runs this per layer)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """Repeat key/value heads so each query head of a grouped-query model sees its group's keys."""
    if groups == 1:
        return states
    batch, kv_heads, length, dim = states.shape
    expanded = states[:, :, None].expand(batch, kv_heads, groups, length, dim)
    return expanded.reshape(batch, kv_heads * groups, length, dim)


def additive_mask(
    attention_mask: torch.Tensor | None,
    position_bias: torch.Tensor | None,
    query: torch.Tensor,
    key_length: int,
    is_causal: bool,
) -> torch.Tensor | None:
    """Turn every mask the model applies into one additive float mask, or None when there is none.

    transformers hands attention functions boolean masks (``True`` = attend, sdpa) or additive float
    masks (eager), sometimes wider than the keys (static caches), plus T5's relative position bias.
    Masked entries become ``finfo.min`` rather than ``-inf`` so fully masked rows (padding queries)
    have a finite LSE and no NaN gradients.
    """
    dtype = query.dtype
    mask = None
    if attention_mask is not None:
        attention_mask = attention_mask[..., :key_length]
        if attention_mask.dtype == torch.bool:
            mask = torch.zeros(attention_mask.shape, dtype=dtype, device=query.device)
            mask = mask.masked_fill(~attention_mask, torch.finfo(dtype).min)
        else:
            mask = attention_mask.to(dtype)
    elif is_causal:
        n = query.shape[-2]
        keep = torch.ones(n, key_length, dtype=torch.bool, device=query.device).tril()
        mask = torch.zeros(n, key_length, dtype=dtype, device=query.device)
        mask = mask.masked_fill(~keep, torch.finfo(dtype).min)[None, None]
    if position_bias is not None:
        position_bias = position_bias[..., :key_length].to(dtype)
        mask = position_bias if mask is None else position_bias + mask
    return mask


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    training: bool,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain softmax attention with materialised scores; the definition the fused path must match.

    ``mask`` is the additive mask from :func:`additive_mask`. ``softcap`` c (Gemma-2) turns the
    scores s into ``tanh(s / c) · c`` before the mask; ``sinks`` (H,) (gpt-oss) adds one logit per
    head to every softmax denominator, which ``lse`` then includes. Returns ``(out, lse, probs)``.
    Inputs of mixed dtypes (autocast) are computed in the widest of them.
    """
    dtype = common_dtype(query, key, value)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask
    scores = scores.to(compute_dtype(scores))
    if sinks is not None:
        sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if sinks is not None:  # the sink takes probability mass but has no value
        probs = probs[..., :-1]
    probs = F.dropout(probs.to(query.dtype), p=dropout, training=training)
    return torch.matmul(probs, value), lse, probs


def add_sink(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the keys plus one per-head sink logit, from attention over the keys alone.

    With LSE' = log(exp(LSE) + exp(sink)), every probability shrinks by exp(LSE - LSE'), so the
    output does too. ``out`` (B, H, N, p), ``lse`` (B, H, N), ``sinks`` (H,): ``(out', LSE')``.
    """
    sink = sinks.to(lse.dtype).reshape(1, -1, 1)
    total = torch.logaddexp(lse, sink)
    return (out * torch.exp(lse - total)[..., None].to(out.dtype)), total


def _pad_channels(x: torch.Tensor, extra: int, fill: float = 0.0) -> torch.Tensor:
    """Append ``extra`` channels of value ``fill`` to the last dimension."""
    if extra == 0:
        return x
    return torch.cat([x, x.new_full((*x.shape[:-1], extra), fill)], dim=-1)


def _to_multiple(size: int, multiple: int) -> int:
    """How many channels to add to ``size`` to reach a multiple of ``multiple``."""
    return (-size) % multiple


def _pad_for_lse_grad(g_lse, g_out, q, k, v, out, extra):
    """Add the channels that turn the kernel's backward into one that also carries dLSE.

    The fused backward computes dS = P * (dO V^T - D) with D_i = sum_c dO_ic O_ic. dLSE_i / dS_ij =
    P_ij, so an upstream gradient g on LSE must add g_i P_ij, i.e. replace D_i by D_i - g_i. One
    extra channel with dO = g and O = -1 does exactly that; zero channels in Q, K, V change neither
    the scores nor dO V^T. (CUDA kernels want head dims in multiples of 8, hence ``extra``.)
    """
    zeros = g_out.new_zeros(*g_out.shape[:-1], extra - 1)
    g_extra = torch.cat([g_lse.to(g_out.dtype)[..., None], zeros], -1)
    out_extra = torch.cat([out.new_full((*out.shape[:-1], 1), -1.0), zeros.to(out.dtype)], -1)
    return (
        torch.cat([g_out, g_extra], -1),
        _pad_channels(q, extra),
        _pad_channels(k, extra),
        _pad_channels(v, extra),
        torch.cat([out, out_extra], -1),
    )


class _FusedAttentionWithLSE(torch.autograd.Function):
    """``(out, lse)`` from a fused kernel, differentiable in both outputs (q, k, v only)."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scaling, is_causal, dropout):
        if query.device.type == "cpu":
            if dropout > 0:
                raise ValueError("the CPU flash kernel has no dropout; call it with dropout=0")
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, is_causal, attn_mask=mask, scale=scaling
            )
            seed = offset = None
            kernel_lse = lse
        else:
            # The memory-efficient kernel wants head dims in multiples of 8 (zero channels change no
            # score), a bias of the full (B, H, N, M) shape with 16-aligned rows, and its own padded
            # LSE (rows rounded up to 32) back in its backward.
            q_, k_, v_ = (_pad_channels(t, _to_multiple(t.shape[-1], 8)) for t in (query, key, value))
            mask = _aligned_bias(mask, query, key)  # kept for the backward as the kernel's bias
            out, kernel_lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
                q_, k_, v_, mask, True, dropout, is_causal, scale=scaling
            )
            out, lse = out[..., : query.shape[-1]], kernel_lse[..., : query.shape[-2]]
        ctx.save_for_backward(query, key, value, mask, out, kernel_lse)
        ctx.rng = (seed, offset)
        ctx.scaling, ctx.is_causal, ctx.dropout = scaling, is_causal, dropout
        return out, lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        query, key, value, mask, out, lse = ctx.saved_tensors
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.contiguous()
        p = query.shape[-1]
        cpu = query.device.type == "cpu"
        tensors = (g_out, query, key, value, out)
        if not cpu:  # the forward's zero channels up to a multiple of 8; one memory layout for all
            tensors = tuple(_pad_channels(t, _to_multiple(p, 8)).contiguous() for t in tensors)
        if g_lse is not None:  # LSE used: extra channels carry its gradient (else the plain backward)
            tensors = _pad_for_lse_grad(g_lse, *tensors, extra=1 if cpu else 8)
        g_out_, q_, k_, v_, out_ = tensors
        if cpu:
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                g_out_, q_, k_, v_, out_, lse, 0.0, ctx.is_causal, attn_mask=mask, scale=ctx.scaling
            )
        else:
            seed, offset = ctx.rng
            gq, gk, gv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                g_out_, q_, k_, v_, mask, out_, lse, seed, offset,
                ctx.dropout, [True, True, True, False], ctx.is_causal, scale=ctx.scaling,
            )
        return gq[..., :p], gk[..., :p], gv[..., :p], None, None, None, None


def _aligned_bias(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The mask as the CUDA memory-efficient kernel wants its bias: (B, H, N, M), each row starting
    16-element aligned in memory (broadcast dimensions may keep stride 0)."""
    if mask is None:
        return None
    mask = mask.to(query.dtype)
    length = mask.shape[-1]
    pad = _to_multiple(length, 16)
    if pad:
        mask = F.pad(mask, (0, pad))[..., :length]
    elif mask.stride(-1) != 1:  # e.g. T5's position bias broadcast along keys (found on a GPU)
        mask = mask.contiguous()
    batch, heads, rows = query.shape[0], query.shape[1], query.shape[-2]
    return mask.expand(batch, heads, rows, key.shape[-2])


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    training: bool,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention returning ``(out, lse)``; same semantics as :func:`reference_attention`.

    ``mask`` must already include the causal pattern unless ``is_causal`` is passed (then it is
    None and the kernel applies a top-left aligned causal mask, as sdpa does). Inputs of mixed
    dtypes (autocast: float32 rotary queries and keys, half values) run in the widest of them, as
    the kernels take one dtype; half-precision inputs run as they are on the CPU kernel.
    """
    dtype = common_dtype(query, key, value)
    query, key, value = as_dtype(query, dtype), as_dtype(key, dtype), as_dtype(value, dtype)
    mask = None if mask is None else as_dtype(mask, dtype)
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    if groups > 1 and length == 1 and not is_causal and (mask is None or mask.shape[1] == 1):
        # One query per head (cached decoding) of a grouped-query model: each key/value head's
        # group of query heads becomes that head's queries, so no key/value is repeated (the
        # mask's single row broadcasts over them). Same scores, same outputs.
        out, lse = fused_attention(query.reshape(batch, key.shape[1], groups, dim), key, value, mask,
                                   scaling, dropout, training, False)
        return out.reshape(batch, heads, 1, dim), lse.reshape(batch, heads, 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dropout = dropout if training else 0.0
    if dropout > 0 and query.device.type == "cpu":
        # PyTorch's CPU flash kernel has no dropout. The output then comes from public sdpa (what the
        # base model runs) and LSE from a dropout-free fused call: linear memory, two kernel calls.
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scaling
        )
        _, lse = _FusedAttentionWithLSE.apply(query, key, value, mask, scaling, is_causal, 0.0)
        return out, lse.to(compute_dtype(lse))
    if query.device.type == "cuda" and query.dtype in (torch.float16, torch.bfloat16):
        # The memory-efficient kernel's half-precision backward, given the extra dLSE channel, returned
        # NaN / wrong query and key gradients in benchmarks/gpu_check.py (float32 matched the float64
        # reference to 1e-6 in every case), so half inputs run the kernel in float32: still linear
        # memory, slower attention.
        out, lse = _FusedAttentionWithLSE.apply(
            query.float(), key.float(), value.float(), None if mask is None else mask.float(), scaling,
            is_causal, dropout,
        )
        return out.to(query.dtype), lse
    if query.device.type == "cpu" and not (torch.is_grad_enabled() and (
            query.requires_grad or key.requires_grad or value.requires_grad)):
        # Nothing to differentiate (inference): the kernel itself, without the autograd wrapper's cost.
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=mask, scale=scaling)[:2]
    else:
        out, lse = _FusedAttentionWithLSE.apply(query, key, value, mask, scaling, is_causal, dropout)
    return out, as_dtype(lse, compute_dtype(lse))
