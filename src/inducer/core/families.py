"""Finding a model's attention modules, their linear layers and feed-forward blocks, from data.

transformers 5 routes attention of most families through one registry; what differs is small:
where the module's output projection lives, which modules are cross-attention, the attribute
names of the head geometry, how a fused q/k/v projection is laid out, where the feed-forward block
is. Those facts live in :mod:`inducer.core.family_records` (one :class:`Family` per family,
re-exported here); this module holds the lookups that read them.

Attention modules that do not call the registry are reached through a seam where their family
record names one (GPT-Neo, MPNet, Falcon: :mod:`inducer.runtime.seams`), and are otherwise (DeBERTa-v2,
RoFormer, Bloom, LongT5's local attention) sites with ``routed=False``: methods on their linear
layers (LoRA, adapters, BitFit) adapt them, methods inside attention (inducers, prefixes) refuse them.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError  # noqa: F401 (defined in the error taxonomy, raised here)
from .family_records import (  # noqa: F401 (re-exported: the records are read through this module)
    CROSS_ATTENTION_NAMES,
    FAMILIES,
    FEED_FORWARD_LAYOUTS,
    GENERIC,
    HEAD_COUNT_ATTRS,
    HEAD_DIM_ATTRS,
    KV_HEAD_COUNT_ATTRS,
    SUPPORTED,
    Family,
    FeedForwardFacts,
    FusedQKV,
)

_BY_ATTENTION = {cls: family for family in FAMILIES for cls in family.attention_classes}
# Layer class name -> the family whose record says where its feed-forward block is.
LAYER_FAMILIES = {cls: family for family in FAMILIES for cls in family.layer_classes if family.feed_forward}


# Class attribute of a module class that inducer.runtime.seams swapped in: the class it stands for.
SEAM_OF = "_inducer_seam_of"


def original_class(module: nn.Module) -> type:
    """The module's own class (the one it had before :mod:`inducer.runtime.seams` swapped in a subclass)."""
    return getattr(type(module), SEAM_OF, type(module))


def seams_installed(model: nn.Module) -> bool:
    """Whether some module of ``model`` runs through a seam (:mod:`inducer.runtime.seams`)."""
    return any(hasattr(type(module), SEAM_OF) for module in model.modules())


def attention_family(module: nn.Module) -> Family | None:
    """The family record of an attention module (None when its class is of no known family)."""
    return _BY_ATTENTION.get(original_class(module).__name__)


def key_value_heads(module: nn.Module, heads: int, through_seam: bool | None = None) -> int:
    """How many key/value heads reach the attention function of ``module`` (``heads`` query heads).

    Fewer than ``heads`` under grouped- or multi-query attention. A family record's
    ``kv_expanded_when`` is a fact of its seam (the inline code repeats keys per query head before
    attending), so it counts only where the module runs through that seam: ``through_seam`` None
    reads it off the module (a seam installed or not); :mod:`inducer.runtime.seams` passes True when it
    checks a module before installing.
    """
    family = attention_family(module)
    seamed = hasattr(type(module), SEAM_OF) if through_seam is None else through_seam
    expanded_when = family.kv_expanded_when if family is not None else None
    if seamed and expanded_when and getattr(module, expanded_when, False):
        return heads
    groups = getattr(module, "num_key_value_groups", None)
    if isinstance(groups, int) and groups > 0 and heads % groups == 0:
        return heads // groups
    # The module's own count first: Falcon's config says num_kv_heads=4 where its multi-query
    # module holds num_kv_heads=1.
    candidates = [getattr(module, name, None) for name in KV_HEAD_COUNT_ATTRS]
    candidates.append(getattr(getattr(module, "config", None), "num_key_value_heads", None))
    for count in candidates:
        if isinstance(count, int) and count > 0:
            return count
    return heads


def layer_family(module: nn.Module) -> Family | None:
    """The family record of a module holding a feed-forward block (None when none is known)."""
    return LAYER_FAMILIES.get(type(module).__name__)




@dataclass(frozen=True)
class AttentionSite:
    """One attention module of a model, with the facts the methods need."""

    name: str
    module: nn.Module
    projection_name: str
    projection: nn.Module
    heads: int
    head_dim: int
    width: int
    layer: int | None
    is_cross: bool
    # Whether the module calls transformers' attention registry, so that inducer's attention
    # function runs for it: methods acting inside attention (inducers, prefixes) need that; methods
    # on its linear layers (LoRA, adapters) do not.
    routed: bool = True
    refusal: str | None = None  # why a module that is not routed cannot be (None: the generic reason)


class SkippedAttentionWarning(UserWarning):
    """An attention-like module of the model is left unadapted (``attach(..., strict=True)``
    raises it as an error instead)."""


def _looks_like_attention(module: nn.Module) -> bool:
    # Attention modules that do not call the registry (DeBERTa-v2, MPNet, GPT-Neo, Bloom, Falcon,
    # LongT5's local attention) still hold their head count; wrappers around them do not.
    return "Attention" in type(module).__name__ and first_attr(module, HEAD_COUNT_ATTRS) is not None


def _calls_attention_registry(module: nn.Module) -> bool:
    # A module with a seam (inducer.runtime.seams) reaches inducer's attention function through it.
    family = attention_family(module)
    has_seam = family is not None and family.seam is not None
    return has_seam or class_calls_attention_registry(original_class(module))


@functools.cache
def class_calls_attention_registry(cls: type) -> bool:
    """Whether the ``forward`` of an attention class calls transformers' attention registry.

    Read from the installed transformers' source, so a family whose attention moves into the
    registry in a new release (Falcon in 5.25) is found to call it without a record change.
    """
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def _resolve(modules: dict[str, nn.Module], name: str, relative: str) -> tuple[str, nn.Module | None]:
    parts = name.split(".") if name else []
    while relative.startswith("../"):
        parts, relative = parts[:-1], relative[3:]
    full = ".".join(parts + relative.split("."))
    return full, modules.get(full)


def linear_width(projection: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(projection, nn.Linear):
        return projection.in_features, projection.out_features
    if type(projection).__name__ == "Conv1D":
        return projection.weight.shape[0], projection.nf
    return None


def first_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def _site(modules: dict[str, nn.Module], name: str, module: nn.Module, routed: bool) -> AttentionSite | str:
    """The site of one attention-like module, or why it cannot be one."""
    cls = type(module).__name__
    family = attention_family(module)
    config = getattr(module, "config", None)
    heads = first_attr(module, HEAD_COUNT_ATTRS) or getattr(config, "num_attention_heads", None)
    head_dim = first_attr(module, HEAD_DIM_ATTRS)
    candidates = (family or GENERIC).output_projection
    for relative in candidates:
        proj_name, proj = _resolve(modules, name, relative)
        shape = linear_width(proj) if proj is not None else None
        if shape is not None and (head_dim is None or heads is None or shape[0] == heads * head_dim):
            break
    else:
        return f"no output projection of the right width among {list(candidates)}"
    if heads is None:
        return f"no head count (looked for {list(HEAD_COUNT_ATTRS)})"
    in_features, width = shape
    is_cross = (
        (family is not None and cls in family.cross_attention_classes)
        or bool(getattr(module, "is_cross_attention", False))
        or any(part in CROSS_ATTENTION_NAMES for part in name.split("."))
    )
    return AttentionSite(name, module, proj_name, proj, heads, head_dim or in_features // heads, width,
                         layer_index(name), is_cross, routed)


def scan_attention(model: nn.Module) -> tuple[list[AttentionSite], dict[str, str]]:
    """Every attention-like module of ``model``: the sites found, and why each other one was skipped.

    A module is attention-like when it calls transformers' attention registry, is of a known
    family, or is named ``*Attention*`` and holds a head count. Sites of the latter kind that do
    not call the registry have ``routed=False``.
    """
    modules = dict(model.named_modules())
    sites, skipped = [], {}
    for name, module in modules.items():
        routed = _calls_attention_registry(module)
        known = attention_family(module) is not None
        if not (routed or known or _looks_like_attention(module)):
            continue
        site = _site(modules, name, module, routed)
        if isinstance(site, AttentionSite):
            sites.append(site)
        elif known:
            raise UnsupportedModelError(f"{type(module).__name__} at {name!r}: {site}")
        elif routed:
            skipped[name] = f"{type(module).__name__}: {site}"
    return sites, skipped


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Every attention module of ``model`` (see :func:`scan_attention`), warning about skipped ones.

    Modules that call the registry but whose output projection or head count cannot be found are
    left out with a :class:`SkippedAttentionWarning` naming them. Raises
    :class:`UnsupportedModelError` naming the supported families when there is no attention module.
    """
    sites, skipped = scan_attention(model)
    if skipped:
        warnings.warn(f"inducer: attention modules left unadapted: {_describe(skipped)}",
                      SkippedAttentionWarning, stacklevel=2)
    if not sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no attention module was found. Supported families: {SUPPORTED} "
            "(and other transformers 5 models whose attention calls ALL_ATTENTION_FUNCTIONS)."
        )
    return sites


def _describe(skipped: dict[str, str]) -> str:
    """``Class: reason (at a, b)`` per distinct reason, for one-line messages."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(repr(name))
    return "; ".join(f"{reason} (at {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                     for reason, names in by_reason.items())


NOT_ROUTED = ("does not call transformers' attention registry, so inducer cannot change its attention; "
              "use LoRA, adapters or BitFit on this model")


def routed_sites(sites: list[AttentionSite], owner: str) -> list[AttentionSite]:
    """The sites a method acting inside attention (``owner``) can adapt: those that call the registry.

    Raises :class:`UnsupportedModelError` naming the module classes when none does; warns with
    :class:`SkippedAttentionWarning` naming the ones left out when only some do (LongT5's local
    encoder attention).
    """
    left_out = {site.name: site.refusal or f"{type(site.module).__name__} {NOT_ROUTED}"
                for site in sites if not site.routed}
    routed = [site for site in sites if site.routed]
    if left_out and not routed:
        raise UnsupportedModelError(f"{owner}: {_describe(left_out)}")
    if left_out:
        warnings.warn(f"{owner}: attention modules left unadapted: {_describe(left_out)}",
                      SkippedAttentionWarning, stacklevel=3)
    return routed
