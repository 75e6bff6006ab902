"""The one place where inducer hooks attention: transformers' attention-function registry.

``attach`` switches the model's attention implementation from ``X`` to ``inducer_X``. For a module
without :class:`~inducer.methods.extension.AttentionExtension` children, ``inducer_X`` calls ``X``
unchanged. For a module with some, the extensions first extend its keys, values and mask (prefixes),
then attention runs, yielding each query's log-sum-exp when an extension needs it (inducers), then
the extensions compose the output (see :mod:`inducer.methods.extension` for how several combine):

* ``inducer_eager`` runs :func:`~inducer.kernels.reference_attention` (materialised scores);
* ``inducer_sdpa`` runs :func:`~inducer.kernels.fused_attention` (LSE from the fused kernel), or
  torch's ``scaled_dot_product_attention`` when no extension needs the LSE.

A matching mask function is registered for each name, as transformers requires.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .kernels import additive_mask, fused_attention, reference_attention, repeat_kv
from .methods.extension import attention_extensions

PREFIX = "inducer_"
# The base implementations we wrap, and which of our two paths serves them. Flash-attention and
# flex bases use the fused path with sdpa's masks.
PATHS = {"eager": "reference", "sdpa": "fused"}
# Attention features of some families (Gemma-2's logit soft-capping, gpt-oss's attention sinks)
# that change the softmax itself: refused for modules with attention extensions.
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")


def wrapped_name(base: str | None) -> str:
    """``inducer_eager`` for eager attention, ``inducer_sdpa`` for everything fused."""
    base = base or "eager"
    if base.startswith(PREFIX):
        return base
    return PREFIX + ("eager" if base == "eager" else "sdpa")


def _base_function(base: str, module: nn.Module) -> Callable:
    if base == "eager":
        # Every family ships its own eager function next to its attention class.
        fn = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
        if fn is not None:
            return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _is_causal(module: nn.Module, query: torch.Tensor, attention_mask, is_causal: bool | None) -> bool:
    # Mirrors transformers' sdpa: a causal flag is only used when no explicit mask was built.
    flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return bool(query.shape[2] > 1 and attention_mask is None and flag)


def _make_attention_function(base: str) -> Callable:
    path = PATHS[base]

    def inducer_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs,
    ):
        extensions = attention_extensions(module)
        if not extensions:
            return _base_function(base, module)(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        unsupported = [k for k in UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
        if unsupported:
            raise NotImplementedError(
                f"inducer: {type(module).__name__} uses {unsupported} in attention, which inducer's "
                "attention (inducers, prefixes) does not implement; ignoring it would give wrong results. "
                "Use LoRA or adapters on this model."
            )
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        for extension in extensions:
            extension.check_query(query)
        needs_lse = any(extension.needs_lse for extension in extensions)
        extends_keys = any(extension.extends_keys for extension in extensions)
        position_bias = kwargs.get("position_bias")
        causal = _is_causal(module, query, attention_mask, kwargs.get("is_causal"))
        if causal and key.shape[2] > query.shape[2]:
            # sdpa's causal flag is top-left aligned: only the first N keys exist (empty static cache).
            key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
        # Eager, or a trainable mask (T5 relative bias under full fine-tuning), which the fused
        # kernels cannot differentiate, use the reference path.
        use_fused = path == "fused" and not (position_bias is not None and position_bias.requires_grad)
        # The fused kernel may apply a plain causal pattern itself. Added keys (prefixes) would break
        # its top-left alignment, and a bias must be added anyway: then the mask holds the causal part.
        kernel_causal = use_fused and causal and position_bias is None and not extends_keys
        mask = additive_mask(attention_mask, position_bias, query, key.shape[2],
                             is_causal=causal and not kernel_causal)
        # Extended keys/values join the tensors the function received (after rotary embedding and
        # the cache update): never cached, seen by every query, the mask covers real keys only.
        for extension in extensions:
            key, value, mask = extension.extend(key, value, mask)
        weights, training, lse = None, module.training, None
        if not needs_lse:  # plain attention over the (extended) keys
            if use_fused:
                groups = query.shape[1] // key.shape[1]
                out = F.scaled_dot_product_attention(
                    query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask,
                    dropout_p=dropout if training else 0.0, scale=scaling,
                )
            else:
                out, _, weights = reference_attention(query, key, value, mask, scaling, dropout, training)
        elif use_fused:
            out, lse = fused_attention(query, key, value, mask, scaling, dropout, training, kernel_causal)
        else:
            out, lse, weights = reference_attention(query, key, value, mask, scaling, dropout, training)
        for extension in extensions:
            out = extension.compose(query, out, lse, scaling, dropout, training)
        return out.transpose(1, 2).contiguous(), weights

    inducer_attention.__name__ = f"inducer_{base}_attention"
    return inducer_attention


def register() -> None:
    """Register ``inducer_eager`` and ``inducer_sdpa`` (idempotent)."""
    for base in PATHS:
        name = PREFIX + base
        if name not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(name, _make_attention_function(base))
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def _configs(model: nn.Module):
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen.add(id(config))
            yield config
            for key in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, key, None)
                if sub is not None and hasattr(sub, "_attn_implementation") and id(sub) not in seen:
                    seen.add(id(sub))
                    yield sub


def current_implementations(model: nn.Module) -> dict[int, str | None]:
    """The attention implementation of every config reachable from ``model``, by config id."""
    return {id(config): config._attn_implementation for config in _configs(model)}


def set_implementation(model: nn.Module, choose: Callable[[str | None], str]) -> dict[int, str | None]:
    """Set every config's implementation to ``choose(current)``; returns the previous ones."""
    register()
    # Read everything first: setting a composite config (EncoderDecoderConfig) also sets its parts.
    configs = list(_configs(model))
    before = {id(config): config._attn_implementation for config in configs}
    for config in configs:
        config._attn_implementation = choose(before[id(config)])
    return before


def restore_implementation(model: nn.Module, before: dict[int, str | None]) -> None:
    """Undo :func:`set_implementation`."""
    for config in _configs(model):
        if id(config) in before:
            config._attn_implementation = before[id(config)]


def set_attention_path(model: nn.Module, path: str) -> None:
    """Choose how inducers compute attention: ``"reference"`` (materialised scores, eager masks)
    or ``"fused"`` (fused kernels, sdpa masks). Both give the same results up to rounding."""
    if path not in ("reference", "fused"):
        raise ValueError(f"path must be 'reference' or 'fused', got {path!r}")
    name = PREFIX + ("eager" if path == "reference" else "sdpa")
    set_implementation(model, lambda _current: name)


def attention_path(model: nn.Module) -> str | None:
    """The path the model's inducers currently use, or None if none is set."""
    for impl in current_implementations(model).values():
        if impl and impl.startswith(PREFIX):
            return PATHS[impl[len(PREFIX):]]
    return None
