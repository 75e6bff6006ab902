"""The linear layers and feed-forward blocks methods adapt, found from the family records.

:class:`LinearTarget` (a linear layer, or the outputs of one role in a fused q/k/v projection) for
LoRA, Kernel-mix and adapters on attention roles, and :class:`FeedForwardSite` (a transformer layer's
feed-forward block, from its family's record or the generic layouts) for FFN adapters and LoRA's
``ffn_in`` / ``ffn_out`` roles. The attention sites themselves are :mod:`inducer.core.families`'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError
from .families import (
    FEED_FORWARD_LAYOUTS,
    GENERIC,
    KV_HEAD_COUNT_ATTRS,
    LAYER_FAMILIES,
    SUPPORTED,
    AttentionSite,
    FeedForwardFacts,
    FusedQKV,
    attention_family,
    first_attr,
    layer_family,
    layer_index,
    linear_width,
)


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
    shape = linear_width(module) if module is not None else None
    if shape is None:
        return None
    size = shape[1] // parts
    return LinearTarget(path, module, shape[0], shape[1], index * size, (index + 1) * size, role,
                        layer_index(path))


def _fused_role_target(modules: dict[str, nn.Module], site: AttentionSite, fused: FusedQKV,
                       role: str) -> LinearTarget:
    """Role ``role`` of a fused q/k/v projection, from the module's head geometry and the layout."""
    whole = linear_target(modules, f"{site.name}.{fused.path}" if site.name else fused.path, role)
    cls = type(site.module).__name__
    if whole is None:
        raise UnsupportedModelError(f"{cls} at {site.name!r}: no fused projection {fused.path!r}")
    heads, p = site.heads, site.head_dim
    kv_heads = first_attr(site.module, KV_HEAD_COUNT_ATTRS) or heads
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
        present = [n for n in linears if n in modules and linear_width(modules[n]) is not None]
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
        width = linear_width(modules[last])[1] if last else _model_width(model)
        sites.append(FeedForwardSite(name, modules[prefix + facts.input], modules[prefix + facts.output],
                                     first, last, width, layer_index(name), "decoder" in name))
    if not sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no feed-forward block of a known family was found "
            f"(known layer classes: {sorted(LAYER_FAMILIES)}). Supported families: {SUPPORTED}."
        )
    return sites
