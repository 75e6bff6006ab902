"""Seams: how inducer's one attention function reaches families whose attention skips the registry.

Most transformers 5 families call ``ALL_ATTENTION_FUNCTIONS``, which :mod:`inducer.attention` wraps.
A few compute attention inline. For those, the family record (:mod:`inducer.family_records`) names
a *seam*: the one method of the attention class where the model already holds its queries, keys,
values and mask, and a small function that hands exactly those tensors to the same attention
function the registry would have called (reference path over eager). No model code is copied:

* ``gpt-neo-attn`` overrides GPT-Neo's ``_attn(query, key, value, attention_mask)``; the causal
  (and local-window) pattern GPT-Neo keeps in its ``bias`` buffer becomes part of the mask;
  GPT-Neo does not scale its scores (scaling 1).
* ``projections-forward`` overrides a BERT-style attention ``forward`` that only projects, attends
  with an additive ``position_bias`` (MPNet's relative bias) and projects out; the projections are
  the module's own layers, read from the family's roles.
* ``sdpa-call`` keeps the model's forward and catches, during it, the module's own call of
  ``torch.nn.functional.scaled_dot_product_attention`` (Falcon's sdpa branch, alibi included in its
  mask), with a thread-local torch function mode. The model runs its sdpa implementation for that.

Every seam runs the model's own method unchanged when no extension (inducer, prefix) of the module
serves the batch, so an attached-but-disabled or zero adapter gives the base's outputs. Seams are
installed by swapping the module's class for a subclass of the same name that overrides the one
method (:func:`install`), and removed by swapping back (:func:`remove`); the subclass survives
``copy.deepcopy`` and leaves the state dict untouched. Seam modules always use the reference path:
:func:`inducer.set_attention_path` does not change them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import attention
from .families import SEAM_OF, attention_family, original_class, seams_installed
from .methods.extension import attention_extensions
from .routing import routed_extensions


@dataclass(frozen=True)
class Seam:
    """One way into inline attention: the method overridden and the function replacing it.

    ``replacement(module, original, *args, **kwargs)`` gets the module, its original bound method
    and the call's arguments. ``implementation``: the attention implementation the model must run
    so that the seam is reached (None: any).
    """

    name: str
    method: str
    replacement: Callable
    implementation: str | None = None


def _serves(module: nn.Module, query: torch.Tensor) -> bool:
    """Whether an extension of the module serves some row of this batch."""
    return bool(routed_extensions(module, query))


def _attention_function() -> Callable:
    attention.register()
    return ALL_ATTENTION_FUNCTIONS[attention.implementation_name("reference", "eager")]


def _gpt_neo_attn(module, original, query, key, value, attention_mask=None, *args, **kwargs):
    if not _serves(module, query):
        return original(query, key, value, attention_mask, *args, **kwargs)
    query_length, key_length = query.shape[-2], key.shape[-2]
    allowed = module.bias[:, :, key_length - query_length: key_length, :key_length]
    lowest = torch.finfo(query.dtype).min
    mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, lowest)
    if attention_mask is not None:  # both parts masked must stay finite
        mask = (mask + attention_mask.to(query.dtype)).clamp(min=lowest)
    out, weights = _attention_function()(module, query, key, value, mask, scaling=1.0,
                                         dropout=module.attn_dropout.p, is_causal=False)
    return out.transpose(1, 2).to(value.dtype), weights


def _projections_forward(module, original, hidden_states, attention_mask=None, position_bias=None,
                         output_attentions=False, **kwargs):
    if not _serves(module, hidden_states):  # rows are batch rows: the hidden states tell them too
        return original(hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    family = attention_family(module)
    head_dim = module.attention_head_size
    shape = (*hidden_states.shape[:-1], -1, head_dim)
    q, k, v = (module.get_submodule(family.roles[role][0])(hidden_states).view(shape).transpose(1, 2)
               for role in ("q", "k", "v"))
    out, weights = _attention_function()(module, q, k, v, attention_mask, scaling=head_dim ** -0.5,
                                         dropout=module.dropout.p, position_bias=position_bias,
                                         is_causal=False)  # bidirectional: no mask means no masking
    out = module.get_submodule(family.output_projection[0])(out.reshape(*hidden_states.shape[:-1], -1))
    return (out, weights) if output_attentions else (out,)


class _CatchAttention(TorchFunctionMode):
    """Sends the module's calls of torch's sdpa to inducer's attention function (when it serves)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.caught = module, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or not _serves(self.module, args[0]):
            return func(*args, **kwargs)
        self.caught += 1
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        call = {**dict(zip(names, args, strict=False)), **kwargs}
        out, _ = _attention_function()(
            self.module, call["query"], call["key"], call["value"], call.get("attn_mask"),
            scaling=call.get("scale"), dropout=call.get("dropout_p", 0.0), is_causal=call.get("is_causal"))
        return out.transpose(1, 2)


def _sdpa_call(module, original, *args, **kwargs):
    if not attention_extensions(module):
        return original(*args, **kwargs)
    if kwargs.get("output_attentions"):
        raise NotImplementedError(
            f"inducer: {type(module).__name__} computes attention inline when output_attentions=True, "
            "where inducer's attention cannot reach it; call the model without output_attentions")
    catch = _CatchAttention(module)
    with catch:
        result = original(*args, **kwargs)
    if not catch.caught and any(_serves(module, t) for t in args[:1] if isinstance(t, torch.Tensor)):
        raise RuntimeError(f"inducer: {type(module).__name__} did not call scaled_dot_product_attention, "
                           "so its inducers/prefixes did not run (is the model's implementation 'sdpa'?)")
    return result


SEAMS: dict[str, Seam] = {seam.name: seam for seam in (
    Seam("gpt-neo-attn", "_attn", _gpt_neo_attn),
    Seam("projections-forward", "forward", _projections_forward),
    Seam("sdpa-call", "forward", _sdpa_call, implementation="sdpa"),
)}


def seam_for(module: nn.Module) -> Seam | None:
    """The seam of the module's family (None: the family calls the registry, or has no seam)."""
    family = attention_family(module)
    return None if family is None or family.seam is None else SEAMS[family.seam]


@functools.cache
def _seamed_class(cls: type, seam: Seam) -> type:
    original = getattr(cls, seam.method)

    def method(self, *args, **kwargs):
        return seam.replacement(self, original.__get__(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = seam.method
    method.__doc__ = f"{cls.__name__}.{seam.method} through inducer's '{seam.name}' seam."
    # Same name and module: family lookups, messages and the eager function next to it still work.
    return type(cls.__name__, (cls,), {seam.method: method, SEAM_OF: cls, "__module__": cls.__module__})


def install(model: nn.Module) -> list[str]:
    """Install the seam of every seam-family attention module of ``model``; their names."""
    names = []
    for name, module in model.named_modules():
        seam = seam_for(module)
        if seam is not None:
            if not hasattr(type(module), SEAM_OF):
                module.__class__ = _seamed_class(type(module), seam)
            names.append(name)
    return names


def remove(model: nn.Module) -> None:
    """Undo :func:`install`: every module gets its own class back."""
    for module in model.modules():
        if hasattr(type(module), SEAM_OF):
            module.__class__ = original_class(module)


installed = seams_installed  # re-exported: whether some module of a model runs through a seam


def required_implementation(model: nn.Module) -> str | None:
    """The attention implementation the model's seams need (None: none)."""
    needs = {seam.implementation for m in model.modules() if (seam := seam_for(m)) and seam.implementation}
    return needs.pop() if len(needs) == 1 else None
