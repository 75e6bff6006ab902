"""The one place where inducer hooks attention: transformers' attention-function registry.

(Families whose attention is inline reach the same function through a seam: :mod:`inducer.runtime.seams`.)

``attach`` switches the model's attention implementation from ``X`` to ``inducer_X``. For a module
without :class:`~inducer.methods.extension.AttentionExtension` children, ``inducer_X`` calls ``X``
unchanged. For a module with some, the extensions first extend its keys, values and mask (prefixes),
then attention runs, yielding each query's log-sum-exp when an extension needs it (inducers), then
the extensions compose the output (see :mod:`inducer.methods.extension` for how several combine):

* the reference path runs :func:`~inducer.core.kernels.reference_attention` (materialised scores);
* the fused path runs :func:`~inducer.core.kernels.fused_attention` (LSE from the fused kernel), or
  torch's ``scaled_dot_product_attention`` when no extension needs the LSE.

Each wrapper name says both the path and the base (``inducer_eager``: reference over eager,
``inducer_sdpa``: fused over sdpa, ``inducer_fused_over_eager``, ``inducer_reference_over_sdpa``).
Modules without extensions run the base exactly, with the base's masks, so no backend the model
does not support is forced on it (a model with ``_supports_sdpa = False``, Gemma-2 or gpt-oss,
keeps eager under either path).

Two softmax features of some families are implemented exactly, in the spec's sense (λ's
normaliser is the model's own, so it includes them):

* logit soft-capping (Gemma-2, ``softcap``: scores become ``tanh(s / c) · c`` before the mask)
  needs the materialised scores: modules with extensions and soft-capping always use the
  reference path, whatever :func:`set_attention_path` chose;
* attention sinks (gpt-oss, ``s_aux``: one extra per-head logit in every softmax denominator)
  fit both paths: the fused path combines the kernel's LSE with the sink logit
  (:func:`~inducer.core.kernels.add_sink`).
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

from ..core.families import seams_installed
from ..core.kernels import add_sink, additive_mask, fused_attention, reference_attention, repeat_kv
from ..errors import ConfigError
from . import routing

# Every wrapper name: (the path modules with extensions use, the base the others run).
# Flash-attention and flex bases are served by sdpa (eager where the model has no sdpa).
NAMES = {
    "inducer_eager": ("reference", "eager"),
    "inducer_sdpa": ("fused", "sdpa"),
    "inducer_fused_over_eager": ("fused", "eager"),
    "inducer_reference_over_sdpa": ("reference", "sdpa"),
}
# Keyword arguments that change the softmax in ways inducer has not verified (other models'
# sink conventions): refused for modules with attention extensions rather than ignored.
UNSUPPORTED_KWARGS = ("sinks",)


def implementation_name(path: str, base: str) -> str:
    """The wrapper serving ``path`` ("reference" / "fused") over ``base`` ("eager" / "sdpa")."""
    return next(name for name, pair in NAMES.items() if pair == (path, base))


def _base_of(implementation: str | None) -> str:
    """The base ("eager" or "sdpa") that an implementation name runs for plain modules."""
    if implementation in NAMES:
        return NAMES[implementation][1]
    return "eager" if implementation in (None, "eager") else "sdpa"


def wrapped_name(base: str | None) -> str:
    """The wrapper of a model's implementation: reference over eager, fused over everything else."""
    if base in NAMES:
        return base
    base = _base_of(base)
    return implementation_name("reference" if base == "eager" else "fused", base)


def _base_function(base: str, module: nn.Module) -> Callable:
    if base == "eager":
        # Every family ships its own eager function next to its attention class.
        fn = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
        if fn is not None:
            return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def is_causal(module: nn.Module, query: torch.Tensor, attention_mask, is_causal: bool | None) -> bool:
    # Mirrors transformers' sdpa: a causal flag is only used when no explicit mask was built.
    flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return bool(query.shape[2] > 1 and attention_mask is None and flag)


def _make_attention_function(path: str, base: str) -> Callable:
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
        # The extensions of the adapters serving some rows of this batch (routing), with those rows.
        routed = routing.routed_extensions(module, query)
        extensions = [extension for extension, _ in routed]
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
        softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        for extension in extensions:
            extension.check_query(query)
        needs_lse = any(extension.needs_lse for extension in extensions)
        extends_keys = any(extension.extends_keys for extension in extensions)
        position_bias = kwargs.get("position_bias")
        causal = is_causal(module, query, attention_mask, kwargs.get("is_causal"))
        if causal and key.shape[2] > query.shape[2]:
            # sdpa's causal flag is top-left aligned: only the first N keys exist (empty static cache).
            key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
        # Eager, a trainable mask (T5 relative bias under full fine-tuning), which the fused kernels
        # cannot differentiate, or soft-capping, which they cannot apply, use the reference path.
        use_fused = path == "fused" and softcap is None and not (
            position_bias is not None and position_bias.requires_grad)
        # A sink changes every normaliser, so the output needs the LSE even without inducers.
        needs_lse = needs_lse or (use_fused and sinks is not None)
        # The fused kernel may apply a plain causal pattern itself. Added keys (prefixes) would break
        # its top-left alignment, and a bias must be added anyway: then the mask holds the causal part.
        kernel_causal = use_fused and causal and position_bias is None and not extends_keys
        mask = additive_mask(attention_mask, position_bias, query, key.shape[2],
                             is_causal=causal and not kernel_causal)
        # Extended keys/values join the tensors the function received (after rotary embedding and
        # the cache update): never cached, seen by every query, the mask covers real keys only.
        for extension, rows in routed:
            key, value, mask = routing.extend(extension, rows, query, key, value, mask)
        weights, training, lse = None, module.training, None
        if not needs_lse:  # plain attention over the (extended) keys
            if use_fused:
                groups = query.shape[1] // key.shape[1]
                out = F.scaled_dot_product_attention(
                    query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask,
                    dropout_p=dropout if training else 0.0, scale=scaling,
                )
            else:
                out, _, weights = reference_attention(query, key, value, mask, scaling, dropout, training,
                                                      softcap, sinks)
        elif use_fused:
            out, lse = fused_attention(query, key, value, mask, scaling, dropout, training, kernel_causal)
            if sinks is not None:
                out, lse = add_sink(out, lse, sinks)
        else:
            out, lse, weights = reference_attention(query, key, value, mask, scaling, dropout, training,
                                                    softcap, sinks)
        out = routing.compose(routed, query, out, lse, scaling, dropout, training)
        return out.transpose(1, 2).contiguous(), weights

    inducer_attention.__name__ = f"inducer_{path}_over_{base}_attention"
    return inducer_attention


def register() -> None:
    """Register every wrapper of :data:`NAMES`, each with its base's mask function (idempotent)."""
    for name, (path, base) in NAMES.items():
        if name not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(name, _make_attention_function(path, base))
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


def _supports_sdpa(model: nn.Module, config) -> bool:
    # The flag is on the pretrained model class owning the config (False: Gemma-2, gpt-oss).
    owners = [m for m in model.modules() if getattr(m, "config", None) is config]
    return all(getattr(owner, "_supports_sdpa", True) is not False for owner in owners)


def set_implementation(model: nn.Module, choose: Callable[[str | None], str]) -> dict[int, str | None]:
    """Set every config's implementation to ``choose(current)``; returns the previous ones.

    A wrapper over sdpa chosen for a model without sdpa support becomes the same path over eager.
    """
    register()
    # Read everything first: setting a composite config (EncoderDecoderConfig) also sets its parts.
    configs = list(_configs(model))
    before = {id(config): config._attn_implementation for config in configs}
    for config in configs:
        name = choose(before[id(config)])
        if NAMES.get(name, (None, None))[1] == "sdpa" and not _supports_sdpa(model, config):
            name = implementation_name(NAMES[name][0], "eager")
        config._attn_implementation = name
    return before


def restore_implementation(model: nn.Module, before: dict[int, str | None]) -> None:
    """Undo :func:`set_implementation`."""
    for config in _configs(model):
        if id(config) in before:
            config._attn_implementation = before[id(config)]


def set_attention_path(model: nn.Module, path: str | None) -> None:
    """Choose how inducers and prefixes compute attention: ``"reference"`` (materialised scores)
    or ``"fused"`` (fused kernels). Both give the same results up to rounding. Modules without
    them keep running the model's own implementation; soft-capped modules and modules reached
    through a seam (:mod:`inducer.runtime.seams`) always use the reference.

    Round-trips with :func:`attention_path`: ``set_attention_path(model, attention_path(model))``
    changes nothing, also where that is None (a model without inducer's attention)."""
    if path is None:
        if attention_path(model) is not None:
            raise ConfigError("set_attention_path: None means 'no inducer attention', but this model's "
                             f"inducers use the {attention_path(model)!r} path; pass 'reference' or 'fused'")
        return
    if path not in ("reference", "fused"):
        raise ConfigError(f"path must be 'reference' or 'fused', got {path!r}")
    if seams_installed(model) and _registry_path(model) is None:
        # Only seam modules (inducer.runtime.seams): they use the reference path, on the model's own base.
        return
    set_implementation(model, lambda current: implementation_name(path, _base_of(current)))


def _registry_path(model: nn.Module) -> str | None:
    for impl in current_implementations(model).values():
        if impl in NAMES:
            return NAMES[impl][0]
    return None


def attention_path(model: nn.Module) -> str | None:
    """The path the model's inducers currently use: ``"reference"`` or ``"fused"``, or None if the
    model has no inducer attention (not attached). Models whose only adapted attention is reached
    through seams (:mod:`inducer.runtime.seams`) use the reference path."""
    path = _registry_path(model)
    if path is None and seams_installed(model):
        return "reference"
    return path
