"""Seams: how inducer's one attention function reaches families whose attention skips the registry.

Most transformers 5 families call ``ALL_ATTENTION_FUNCTIONS``, which :mod:`inducer.runtime.attention` wraps.
A few compute attention inline. For those, the family record (:mod:`inducer.core.family_records`) names
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
import inspect
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..core.families import (
    HEAD_COUNT_ATTRS,
    HEAD_DIM_ATTRS,
    SEAM_OF,
    UnsupportedModelError,
    attention_family,
    class_calls_attention_registry,
    key_value_heads,
    original_class,
    seams_installed,
)
from ..core.kernels import additive_mask, reference_attention
from ..methods.extension import attention_extensions
from . import attention
from .routing import routed_extensions


@dataclass(frozen=True)
class Seam:
    """One way into inline attention: the method overridden and the function replacing it.

    ``replacement(module, original, *args, **kwargs)`` gets the module, its original bound method
    and the call's arguments. ``implementation``: the attention implementation the model must run
    so that the seam is reached (None: any). What the seam relies on, checked at attach
    (:func:`check`): ``parameters``, the leading parameters of the method, by name, in order;
    ``attributes``, the module attributes it reads; ``probe_inputs(module)``, a tiny call of the
    method ``(args, kwargs)`` on which the seam must reproduce the model's own output.
    """

    name: str
    method: str
    replacement: Callable
    parameters: tuple[str, ...]
    attributes: tuple[str, ...]
    probe_inputs: Callable[[nn.Module], tuple[tuple, dict]]
    implementation: str | None = None


def _serves(module: nn.Module, query: torch.Tensor) -> bool:
    """Whether an extension of the module serves some row of this batch (every row in a check)."""
    return _PROBE.active or bool(routed_extensions(module, query))


def _attention_function() -> Callable:
    attention.register()
    return ALL_ATTENTION_FUNCTIONS[attention.implementation_name("reference", "eager")]


class _Probe(threading.local):
    """Set while :func:`check` runs a seam on a tiny input: every module serves, and what reaches
    attention is recorded and computed by the plain reference instead of the extensions."""

    active = False
    key_heads: list[int]


_PROBE = _Probe()


def _attend(module, query, key, value, mask, scaling, dropout, **kwargs):
    """Call inducer's attention function, as the registry would have (reference over eager)."""
    if not _PROBE.active:
        return _attention_function()(module, query, key, value, mask, scaling=scaling, dropout=dropout,
                                     **kwargs)
    _PROBE.key_heads.append(key.shape[1])
    causal = attention.is_causal(module, query, mask, kwargs.get("is_causal"))
    full_mask = additive_mask(mask, kwargs.get("position_bias"), query, key.shape[2], is_causal=causal)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    out, _, weights = reference_attention(query, key, value, full_mask, scaling, 0.0, False)
    return out.transpose(1, 2).contiguous(), weights


def _gpt_neo_attn(module, original, query, key, value, attention_mask=None, *args, **kwargs):
    if not _serves(module, query):
        return original(query, key, value, attention_mask, *args, **kwargs)
    query_length, key_length = query.shape[-2], key.shape[-2]
    allowed = module.bias[:, :, key_length - query_length: key_length, :key_length]
    lowest = torch.finfo(query.dtype).min
    mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, lowest)
    if attention_mask is not None:  # both parts masked must stay finite
        mask = (mask + attention_mask.to(query.dtype)).clamp(min=lowest)
    out, weights = _attend(module, query, key, value, mask, scaling=1.0, dropout=module.attn_dropout.p,
                           is_causal=False)
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
    out, weights = _attend(module, q, k, v, attention_mask, scaling=head_dim ** -0.5,
                           dropout=module.dropout.p,
                           position_bias=position_bias, is_causal=False)  # bidirectional: no mask, no masking
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
        out, _ = _attend(self.module, call["query"], call["key"], call["value"], call.get("attn_mask"),
                         scaling=call.get("scale"), dropout=call.get("dropout_p", 0.0),
                         is_causal=call.get("is_causal"))
        return out.transpose(1, 2)


def _sdpa_call(module, original, *args, **kwargs):
    if not (_PROBE.active or attention_extensions(module)):
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


_PROBE_LENGTH = 3


def _like(module: nn.Module, *shape: int) -> torch.Tensor:
    reference = next(module.parameters())
    generator = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=generator).to(device=reference.device, dtype=reference.dtype)


def _heads(module: nn.Module) -> tuple[int, int]:
    """(query heads, head dim) of an attention module, from its own attributes."""
    heads = next(getattr(module, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(module, a, None), int))
    dim = next(getattr(module, a) for a in HEAD_DIM_ATTRS if isinstance(getattr(module, a, None), int))
    return heads, dim


def _attn_inputs(module: nn.Module) -> tuple[tuple, dict]:
    heads, dim = _heads(module)
    query, key, value = (_like(module, 1, heads, _PROBE_LENGTH, dim) * (i + 1) for i in range(3))
    return (query, key, value, None), {}


def _hidden_inputs(module: nn.Module) -> tuple[tuple, dict]:
    heads, dim = _heads(module)
    hidden = _like(module, 1, _PROBE_LENGTH, heads * dim)  # the inline families' width
    parameters = inspect.signature(original_class(module).forward).parameters
    # Required arguments the probe does not know are absent (None); Falcon <= 5.24's ``alibi`` is a
    # zero bias on an ALiBi model, so that its ALiBi branch is the one checked.
    kwargs = {name: None for name, p in list(parameters.items())[2:]
              if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    if "alibi" in kwargs and getattr(getattr(module, "config", None), "alibi", False):
        kwargs["alibi"] = torch.zeros(heads, 1, _PROBE_LENGTH, dtype=hidden.dtype, device=hidden.device)
    if "position_embeddings" in parameters:
        # Rotary families: a real rotation (not the identity) so that its use is checked too.
        angle = torch.arange(_PROBE_LENGTH, dtype=hidden.dtype, device=hidden.device)[:, None] * 0.3
        angle = angle.expand(_PROBE_LENGTH, dim)[None]
        kwargs["position_embeddings"] = (angle.cos(), angle.sin())
    return (hidden,), {**kwargs, "attention_mask": None}


SEAMS: dict[str, Seam] = {seam.name: seam for seam in (
    Seam("gpt-neo-attn", "_attn", _gpt_neo_attn, ("query", "key", "value", "attention_mask"),
         ("bias", "attn_dropout"), _attn_inputs),
    Seam("projections-forward", "forward", _projections_forward,
         ("hidden_states", "attention_mask", "position_bias", "output_attentions"),
         ("attention_head_size", "dropout"), _hidden_inputs),
    Seam("sdpa-call", "forward", _sdpa_call, ("hidden_states",), ("config",), _hidden_inputs,
         implementation="sdpa"),
)}


def seam_for(module: nn.Module) -> Seam | None:
    """The seam of the module's family (None: the family calls the registry, or has no seam).

    A family whose installed code calls transformers' attention registry needs no seam, whatever
    its record says: the registry hook reaches it (Falcon from transformers 5.25).
    """
    family = attention_family(module)
    if family is None or family.seam is None or class_calls_attention_registry(original_class(module)):
        return None
    return SEAMS[family.seam]


class SeamMismatchError(UnsupportedModelError):
    """A seam family's code is not what its seam was written for (transformers changed it)."""


def _refuse(module: nn.Module, what: str) -> SeamMismatchError:
    family = attention_family(module)
    tested = f" (tested on transformers {family.seam_tested_on})" if family and family.seam_tested_on else ""
    name = original_class(module).__name__
    return SeamMismatchError(
        f"{name} in transformers {transformers.__version__} is not what inducer's attention "
        f"seam for {family.name if family else name} expects{tested}: {what}. Inducers and prefixes "
        "cannot run on it; use LoRA, adapters or BitFit on this model, or install a tested "
        "transformers version (docs/model_support.md)")


def _probe(module: nn.Module, seam: Seam) -> None:
    """Run the seam and the model's own method on a tiny input; refuse where they disagree."""
    cls = original_class(module)
    args, kwargs = seam.probe_inputs(module)
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
    training = {sub: sub.training for sub in module.modules()}
    try:
        if seam.implementation is not None:
            module.config._attn_implementation = seam.implementation
        module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            own = getattr(cls, seam.method)(module, *args, **kwargs)
            _PROBE.active, _PROBE.key_heads = True, []
            original = getattr(cls, seam.method).__get__(module)
            through_seam = seam.replacement(module, original, *args, **kwargs)
    finally:
        _PROBE.active = False
        for sub, mode in training.items():
            sub.training = mode
        if seam.implementation is not None:
            module.config._attn_implementation = implementation
    if not _PROBE.key_heads:
        raise _refuse(module, f"its {seam.method} no longer reaches the point the seam catches")
    heads, _ = _heads(module)
    expected = key_value_heads(module, heads, through_seam=True)
    if set(_PROBE.key_heads) != {expected}:
        raise _refuse(module, f"keys reach attention with {_PROBE.key_heads[0]} heads where the seam's facts "
                              f"say {expected} (the point where key/value heads are repeated moved)")
    own, through_seam = (x[0] if isinstance(x, tuple) else x for x in (own, through_seam))
    tolerance = 1e-4 if own.dtype == torch.float32 else 3e-2
    if own.shape != through_seam.shape or not torch.allclose(own.float(), through_seam.float(),
                                                             atol=tolerance, rtol=tolerance):
        raise _refuse(module, f"its {seam.method} computes attention differently from the seam "
                              "(a zero adapter would change the model's outputs)")


def _check_module(module: nn.Module, seam: Seam) -> None:
    cls = original_class(module)
    method = getattr(cls, seam.method, None)
    if not callable(method):
        raise _refuse(module, f"it has no method {seam.method}")
    names = list(inspect.signature(method).parameters)[1:len(seam.parameters) + 1]
    if tuple(names) != seam.parameters:
        raise _refuse(module, f"{seam.method} takes ({', '.join(names)}) where the seam passes "
                              f"({', '.join(seam.parameters)})")
    missing = [attr for attr in seam.attributes if not hasattr(module, attr)]
    if missing:
        raise _refuse(module, f"it has no attribute {', '.join(missing)}")
    if next(module.parameters()).device.type != "meta":  # a meta copy has no values to compare
        _probe(module, seam)


def refusals(model: nn.Module) -> dict[str, SeamMismatchError]:
    """The seam modules of ``model`` whose code no longer fits their seam, by module name, with why.

    Checked once per attention class and config: the seam method and the leading parameters it
    relies on, the module attributes it reads, and a probe on a tiny input (the module in eval
    mode, no gradients, the random state untouched): the seam must reach attention, hand it the
    number of key/value heads the family's facts say, and reproduce the model's own output.
    Nothing of the model changes. :func:`inducer.attach` installs no seam on these modules, and
    inducers and prefixes refuse them with the error's one line; LoRA, adapters and BitFit, which
    do not need the seam, still apply.
    """
    verdicts: dict[tuple[type, int], SeamMismatchError | None] = {}
    found = {}
    for name, module in model.named_modules():
        seam = seam_for(module)
        if seam is None:
            continue
        key = (original_class(module), id(getattr(module, "config", None)))
        if key not in verdicts:
            try:
                _check_module(module, seam)
                verdicts[key] = None
            except SeamMismatchError as error:
                verdicts[key] = error
        if verdicts[key] is not None:
            found[name] = verdicts[key]
    return found


def check(model: nn.Module) -> None:
    """Raise the first of :func:`refusals` (:class:`SeamMismatchError`, one line), if any."""
    for error in refusals(model).values():
        raise error


@functools.cache
def _seamed_class(cls: type, seam: Seam) -> type:
    original = getattr(cls, seam.method)

    def method(self, *args, **kwargs):
        return seam.replacement(self, original.__get__(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = seam.method
    method.__doc__ = f"{cls.__name__}.{seam.method} through inducer's '{seam.name}' seam."
    # Same name and module: family lookups, messages and the eager function next to it still work.
    return type(cls.__name__, (cls,), {seam.method: method, SEAM_OF: cls, "__module__": cls.__module__})


def install(model: nn.Module, skip: Collection[str] = ()) -> list[str]:
    """Install the seam of every seam-family attention module of ``model`` but those named in
    ``skip`` (:func:`refusals`); their names."""
    names = []
    for name, module in model.named_modules():
        seam = seam_for(module)
        if seam is not None and name not in skip:
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
