"""Bottleneck adapters: sequential (Houlsby et al. 2019, Pfeiffer et al. 2021) and parallel
(He et al. 2022), placed at the attention output and/or the feed-forward block.

An adapter is ``up(act(down(LN?(x))))``, width d -> ``bottleneck`` -> d, scaled by ``scale``.

* sequential (``houlsby``, ``pfeiffer``): ``y = h + scale * adapter(h)`` where h is the sub-layer's
  output (before its dropout, residual and LayerNorm). Houlsby places one after attention and one
  after the FFN; Pfeiffer one after the FFN.
* ``parallel``: ``y = h + scale * adapter(x)`` where x is the sub-layer's input.

Tensors: ``P.adapter_attn.*`` under each attention module and ``P.adapter_ffn.*`` under the module
holding each FFN (``down.weight`` [b, d], ``down.bias``, ``up.weight`` [d, b], ``up.bias``, and
``norm.*`` with ``layer_norm=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..core.families import AttentionSite
from ..core.linear_targets import find_feed_forward_sites
from ..core.naming import DEFAULT_ADAPTER
from ..errors import ConfigError
from .base import (
    Applied,
    MethodConfig,
    MethodHook,
    PresetSpec,
    adapter_dtype,
    add_child,
    check_choice,
    check_int,
    check_layers,
    register_method,
    register_presets,
)

DEFAULT_PLACEMENT = {"houlsby": "both", "pfeiffer": "ffn", "parallel": "ffn"}


@register_method
@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapter settings.

    Args:
        kind: ``"houlsby"``, ``"pfeiffer"`` (sequential) or ``"parallel"``.
        bottleneck: hidden size of the adapter (>= 1).
        scale: multiplier of the adapter's output (He et al.'s scaled parallel adapter uses 4).
        placement: ``"attn"``, ``"ffn"`` or ``"both"``; None = the kind's own (Houlsby both,
            Pfeiffer and parallel ffn).
        init: ``"lora"`` (down Kaiming-uniform, up zero: starts as the base model) or ``"bert"``
            (both normal with std 0.02, as BERT initialises its layers).
        layer_norm: a LayerNorm on the adapter's input.
        non_linearity: ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"swish"``.
        layers: layer indices to adapt (None = all).
    """

    kind: Literal["houlsby", "pfeiffer", "parallel"] = "pfeiffer"
    bottleneck: int = 64
    scale: float = 1.0
    placement: Literal["attn", "ffn", "both"] | None = None
    init: Literal["lora", "bert"] = "lora"
    layer_norm: bool = False
    non_linearity: str = "relu"
    layers: list[int] | None = None
    method: ClassVar[str] = "adapter"

    def __post_init__(self) -> None:
        check_choice("AdapterConfig", "kind", self.kind, tuple(DEFAULT_PLACEMENT))
        check_int("AdapterConfig", "bottleneck", self.bottleneck, 1)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or self.scale <= 0:
            raise ConfigError(f"AdapterConfig.scale must be a number > 0, got {self.scale!r}")
        check_choice("AdapterConfig", "placement", self.placement, (None, "attn", "ffn", "both"))
        check_choice("AdapterConfig", "init", self.init, ("lora", "bert"))
        check_choice("AdapterConfig", "non_linearity", self.non_linearity, tuple(ACTIVATIONS))
        if not isinstance(self.layer_norm, bool):
            raise ConfigError(f"AdapterConfig.layer_norm must be True or False, got {self.layer_norm!r}")
        self.layers = check_layers("AdapterConfig", self.layers)

    @property
    def where(self) -> str:
        """The effective placement."""
        return self.placement or DEFAULT_PLACEMENT[self.kind]

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Add adapters at the chosen attention outputs and FFN blocks, with their hooks."""
        applied = Applied()
        chosen = lambda layer: self.layers is None or layer in self.layers  # noqa: E731
        parallel = self.kind == "parallel"
        if self.where in ("attn", "both"):
            for site in (s for s in sites if chosen(s.layer)):
                block = self._adapter(site.width, adapter_dtype(site.projection))
                applied.modules.append(add_child(model, site.name, "adapter_attn", block, "AdapterConfig",
                                                 adapter=adapter))
                if parallel:
                    StashInput(block, keyword="hidden_states").register(site.module)
                AddAdapterOutput(block, parallel).register(site.projection)
        if self.where in ("ffn", "both"):
            for ffn in (f for f in find_feed_forward_sites(model) if chosen(f.layer)):
                block = self._adapter(ffn.width, adapter_dtype(ffn.output))
                applied.modules.append(add_child(model, ffn.name, "adapter_ffn", block, "AdapterConfig",
                                                 adapter=adapter))
                if parallel:
                    StashInput(block).register(ffn.input)
                AddAdapterOutput(block, parallel).register(ffn.output)
        if not applied.modules:
            raise ConfigError(f"AdapterConfig(layers={self.layers}) matches no layer of this model")
        return applied

    def _adapter(self, width: int, dtype: torch.dtype) -> BottleneckAdapter:
        return BottleneckAdapter(width, self.bottleneck, self.scale, self.init, self.layer_norm,
                                 self.non_linearity, dtype)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """``scale * up(act(down(LN?(x))))``."""

    def __init__(self, width: int, bottleneck: int, scale: float, init: str, layer_norm: bool,
                 non_linearity: str, dtype: torch.dtype | None = None):
        super().__init__()
        self.scale = scale
        self.norm = nn.LayerNorm(width, dtype=dtype) if layer_norm else None
        self.down = nn.Linear(width, bottleneck, dtype=dtype)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, width, dtype=dtype)
        with torch.no_grad():
            if init == "lora":  # the update starts at exactly zero
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                nn.init.zeros_(self.up.weight)
            else:
                nn.init.normal_(self.down.weight, std=0.02)
                nn.init.normal_(self.up.weight, std=0.02)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)
        # The parallel variant's input, set by a pre-hook and used by the output hook of the same
        # forward pass (so gradient checkpointing's re-run sees its own input).
        self._pending_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled adapter output for ``x`` (to be added to a sub-layer's output)."""
        x = x.to(self.down.weight.dtype)
        if self.norm is not None:
            x = self.norm(x)
        return self.scale * self.up(self.act(self.down(x)))


class StashInput(MethodHook):
    """Forward pre-hook: keep a sub-layer's input for its parallel adapter."""

    pre = True
    with_kwargs = True

    def __init__(self, adapter: BottleneckAdapter, keyword: str | None = None):
        self.adapter, self.keyword = adapter, keyword

    def __call__(self, _module, args, kwargs):
        x = args[0] if args else kwargs[self.keyword]
        self.adapter._pending_input = x
        return None


class AddAdapterOutput(MethodHook):
    """Forward hook: ``h + adapter(h)`` (sequential) or ``h + adapter(x)`` (parallel)."""

    def __init__(self, adapter: BottleneckAdapter, parallel: bool):
        self.adapter, self.parallel = adapter, parallel

    def __call__(self, _module, _inputs, output):
        # Some blocks return (hidden states, extras): a mixture's router logits (gpt-oss).
        hidden = output[0] if isinstance(output, tuple) else output
        if self.parallel:
            x, self.adapter._pending_input = self.adapter._pending_input, None
            if x is None:
                raise RuntimeError("parallel adapter: the sub-layer's input was not captured")
        else:
            x = hidden
        hidden = hidden + self.adapter(x).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


register_presets(
    PresetSpec(
        "adapter", "Pfeiffer adapter: a sequential bottleneck after each feed-forward block",
        lambda bottleneck, layers=None: [
            AdapterConfig(kind="pfeiffer", bottleneck=bottleneck, layers=layers)],
        {"bottleneck": 64}, {"bottleneck": range(1, 2049)}),
    PresetSpec(
        "parallel-adapter",
        "scaled parallel adapter (He et al.): a bottleneck beside each feed-forward block, scale 4",
        lambda bottleneck, layers=None: [AdapterConfig(kind="parallel", bottleneck=bottleneck, scale=4.0,
                                                       layers=layers)],
        {"bottleneck": 64}, {"bottleneck": range(1, 2049)}),
)
