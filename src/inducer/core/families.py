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
_BY_LAYER = {cls: family for family in FAMILIES for cls in family.layer_classes if family.feed_forward}


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
    return _BY_LAYER.get(type(module).__name__)




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
    return "Attention" in type(module).__name__ and _first_attr(module, HEAD_COUNT_ATTRS) is not None


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


def _width(projection: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(projection, nn.Linear):
        return projection.in_features, projection.out_features
    if type(projection).__name__ == "Conv1D":
        return projection.weight.shape[0], projection.nf
    return None


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def _site(modules: dict[str, nn.Module], name: str, module: nn.Module, routed: bool) -> AttentionSite | str:
    """The site of one attention-like module, or why it cannot be one."""
    cls = type(module).__name__
    family = attention_family(module)
    config = getattr(module, "config", None)
    heads = _first_attr(module, HEAD_COUNT_ATTRS) or getattr(config, "num_attention_heads", None)
    head_dim = _first_attr(module, HEAD_DIM_ATTRS)
    candidates = (family or GENERIC).output_projection
    for relative in candidates:
        proj_name, proj = _resolve(modules, name, relative)
        shape = _width(proj) if proj is not None else None
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
                         _layer_index(name), is_cross, routed)


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


@dataclass(frozen=True)
class LinearTarget:
    """A linear layer (nn.Linear or GPT-2's Conv1D) or some of its outputs, to be adapted.

    The adapted outputs are ``[start, stop)``, or, when they are not contiguous (one role of a
    fused q/k/v layer laid out per head, GPT-NeoX), ``rows``; ``start`` and ``stop`` then raise
    :class:`UnsupportedModelError`, so a method that only knows slices says so instead of adapting
    the wrong outputs.
    """

    name: str
    module: nn.Module
    in_features: int
    out_features: int  # of the whole layer
    slice_start: int | None
    slice_stop: int | None
    role: str  # "q", "k", "v", "o", "ffn_in", "ffn_out", or "" for a name pattern
    layer: int | None
    rows: tuple[int, ...] | None = None

    @property
    def start(self) -> int:
        """First adapted output (contiguous targets only)."""
        self._require_slice()
        return self.slice_start

    @property
    def stop(self) -> int:
        """One past the last adapted output (contiguous targets only)."""
        self._require_slice()
        return self.slice_stop

    def _require_slice(self) -> None:
        if self.rows is not None:
            raise UnsupportedModelError(
                f"{self.name}: the {self.role!r} outputs of this fused q/k/v projection are spread over "
                "its heads, not one slice, which this method cannot adapt; use LoRA on this model")

    @property
    def is_conv1d(self) -> bool:
        """GPT-2's Conv1D stores its weight as (in, out), nn.Linear as (out, in)."""
        return type(self.module).__name__ == "Conv1D"

    @property
    def size(self) -> int:
        """How many outputs are adapted."""
        return len(self.rows) if self.rows is not None else self.slice_stop - self.slice_start


def linear_target(modules: dict[str, nn.Module], name: str, role: str = "") -> LinearTarget | None:
    """The :class:`LinearTarget` for ``name`` ("path" or "path[i/n]"), or None if it is not linear."""
    match = re.fullmatch(r"(.*)\[(\d+)/(\d+)\]", name)
    path, index, parts = (match.group(1), int(match.group(2)), int(match.group(3))) if match else (name, 0, 1)
    module = modules.get(path)
    shape = _width(module) if module is not None else None
    if shape is None:
        return None
    size = shape[1] // parts
    return LinearTarget(path, module, shape[0], shape[1], index * size, (index + 1) * size, role,
                        _layer_index(path))


def _fused_role_target(modules: dict[str, nn.Module], site: AttentionSite, fused: FusedQKV,
                       role: str) -> LinearTarget:
    """Role ``role`` of a fused q/k/v projection, from the module's head geometry and the layout."""
    whole = linear_target(modules, f"{site.name}.{fused.path}" if site.name else fused.path, role)
    cls = type(site.module).__name__
    if whole is None:
        raise UnsupportedModelError(f"{cls} at {site.name!r}: no fused projection {fused.path!r}")
    heads, p = site.heads, site.head_dim
    kv_heads = _first_attr(site.module, KV_HEAD_COUNT_ATTRS) or heads
    if whole.out_features != (heads + 2 * kv_heads) * p or heads % kv_heads:
        raise UnsupportedModelError(
            f"{cls} at {site.name!r}: {fused.path} has {whole.out_features} outputs, not the "
            f"({heads} + 2·{kv_heads})·{p} its {fused.layout!r} layout needs")
    sizes = {"q": heads * p, "k": kv_heads * p, "v": kv_heads * p}
    if fused.layout == "grouped" or kv_heads == 1:  # [Q | K | V]: one contiguous block per role
        start = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[role]
        return LinearTarget(whole.name, whole.module, whole.in_features, whole.out_features,
                            start, start + sizes[role], role, whole.layer)
    # per_group: each key/value head's block is [its queries | its key | its value].
    per_group = heads // kv_heads
    block, offset = (per_group + 2) * p, {"q": 0, "k": per_group * p, "v": (per_group + 1) * p}[role]
    length = sizes[role] // kv_heads
    rows = tuple(g * block + offset + i for g in range(kv_heads) for i in range(length))
    return LinearTarget(whole.name, whole.module, whole.in_features, whole.out_features,
                        None, None, role, whole.layer, rows)


def attention_role_targets(modules: dict[str, nn.Module], site: AttentionSite, role: str) -> LinearTarget:
    """The linear layer playing ``role`` ("q", "k", "v" or "o") in the attention module ``site``."""
    if role == "o":
        return linear_target(modules, site.projection_name, "o")
    cls = type(site.module).__name__
    family = attention_family(site.module) or GENERIC
    if family.fused_qkv is not None and not site.is_cross:
        return _fused_role_target(modules, site, family.fused_qkv, role)
    table = (family.cross_roles if site.is_cross else None) or family.roles or GENERIC.roles
    candidates = table[role]
    for relative in candidates:
        full = f"{site.name}.{relative}" if site.name else relative
        target = linear_target(modules, full, role)
        if target is not None:
            return target
    raise UnsupportedModelError(f"{cls} at {site.name!r}: no linear layer for role {role!r} "
                                f"(looked for {candidates})")


@dataclass(frozen=True)
class FeedForwardSite:
    """One feed-forward block of a model (see :class:`FeedForwardFacts`)."""

    name: str  # the module holding the block (a transformer layer, or T5's T5LayerFF)
    input: nn.Module
    output: nn.Module
    first: tuple[str, ...]  # qualified names of its first linear layer(s)
    last: str
    width: int  # model width: the FFN's input and output size
    layer: int | None
    in_decoder: bool


def _generic_layout(modules: dict[str, nn.Module], name: str, module: nn.Module) -> FeedForwardFacts | None:
    # A transformer layer of no known family: the first layout of FEED_FORWARD_LAYOUTS that fits.
    cls = type(module).__name__
    if "Layer" not in cls and "Block" not in cls:
        return None
    prefix = f"{name}." if name else ""
    for facts in FEED_FORWARD_LAYOUTS:
        linears = [prefix + f for f in (*facts.first, facts.last) if f]
        present = [n for n in linears if n in modules and _width(modules[n]) is not None]
        marker = [prefix + facts.marker] if facts.marker else []
        needed = [prefix + facts.input, prefix + facts.output, *marker]
        if facts.first and not any(prefix + f in present for f in facts.first):
            continue
        if (not facts.last or prefix + facts.last in present) and all(n in modules for n in needed):
            return facts
    return None


def _model_width(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    return getattr(config, "hidden_size", None) or getattr(config, "d_model", None)


def find_feed_forward_sites(model: nn.Module) -> list[FeedForwardSite]:
    """Every feed-forward block: of a known family's layer, or of a transformer layer matching one
    of :data:`FEED_FORWARD_LAYOUTS`; raises for a model with none."""
    modules = dict(model.named_modules())
    sites = []
    for name, module in modules.items():
        family = layer_family(module)
        facts = family.feed_forward if family is not None else _generic_layout(modules, name, module)
        if facts is None:
            continue
        prefix = f"{name}." if name else ""
        first = tuple(prefix + f for f in facts.first if prefix + f in modules)
        last = prefix + facts.last if facts.last else ""
        width = _width(modules[last])[1] if last else _model_width(model)
        sites.append(FeedForwardSite(name, modules[prefix + facts.input], modules[prefix + facts.output],
                                     first, last, width, _layer_index(name), "decoder" in name))
    if not sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no feed-forward block of a known family was found "
            f"(known layer classes: {sorted(_BY_LAYER)}). Supported families: {SUPPORTED}."
        )
    return sites
