"""Kernel-mix (Chen et al., NAACL-Findings 2022): per-head low-rank updates of W_q, W_v and W_o.

Reading each attention head as its own kernel smoother, every head h gets its own rank-r update of
the query and value projections (``x @ a_h @ b_h`` for the head's p output columns) and of its
share of the output projection (``attn_h @ a_h @ b_h`` for the head's p input rows). All ``b`` start
at zero, so the model starts as the pretrained one.

Tensors at each adapted layer X: ``X.kernel_mix[_q|_v].a`` [H, in, r] and ``.b`` [H, r, p] for q/v
(``[H, p, r]`` and ``[H, r, d]`` for o).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.families import AttentionSite
from ..core.linear_targets import LinearTarget, attention_role_targets
from ..core.naming import DEFAULT_ADAPTER
from ..errors import ConfigError
from .base import (
    Applied,
    MethodConfig,
    PresetSpec,
    adapter_dtype,
    add_child,
    check_int,
    check_layers,
    register_method,
    register_presets,
)
from .low_rank import AddLowRankUpdate, child_name


@register_method
@dataclass
class KernelMixConfig(MethodConfig):
    """Kernel-mix settings: per-head rank ``r``, scaling ``alpha / r``, roles among q, v, o."""

    r: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v", "o"])
    layers: list[int] | None = None
    method: ClassVar[str] = "kernel-mix"

    def __post_init__(self) -> None:
        check_int("KernelMixConfig", "r", self.r, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"KernelMixConfig.alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"KernelMixConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets or not set(self.targets) <= {"q", "v", "o"}:
            raise ConfigError(f"KernelMixConfig.targets must be a non-empty subset of ['q', 'v', 'o'], "
                             f"got {self.targets!r}")
        self.targets = list(self.targets)
        self.layers = check_layers("KernelMixConfig", self.layers)

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Give the q, v and o layers of every chosen attention module a per-head update."""
        modules = dict(model.named_modules())
        applied = Applied()
        for site in sites:
            if self.layers is not None and site.layer not in self.layers:
                continue
            kv_heads = site.heads
            for role in self.targets:
                target = attention_role_targets(modules, site, role)
                if role == "v":
                    kv_heads = (target.stop - target.start) // site.head_dim  # grouped-query models
                heads = kv_heads if role == "v" else site.heads
                module = PerHeadLowRank(target, heads, site.head_dim, self.r, self.alpha, self.dropout,
                                        output_side=role != "o", dtype=adapter_dtype(target.module))
                name = child_name("kernel_mix", target)
                applied.modules.append(add_child(model, target.name, name, module, "KernelMixConfig",
                                                 adapter=adapter))
                AddLowRankUpdate(module).register(target.module)
        if not applied.modules:
            raise ConfigError(f"KernelMixConfig(layers={self.layers}) matches no attention module")
        return applied


class PerHeadLowRank(nn.Module):
    """Per-head rank-r update of a projection, on its output heads (q, v) or input heads (o)."""

    def __init__(self, target: LinearTarget, heads: int, head_dim: int, r: int, alpha: float,
                 dropout: float, output_side: bool, dtype=None):
        super().__init__()
        self.start, self.stop, self.out_features = target.start, target.stop, target.out_features
        self.heads, self.head_dim, self.output_side = heads, head_dim, output_side
        self.scale, self.dropout = alpha / r, dropout
        if output_side:  # x [.., in] -> per head [.., p]
            a_shape, b_shape = (heads, target.in_features, r), (heads, r, head_dim)
        else:  # per head input [.., p] -> [.., out]
            a_shape, b_shape = (heads, head_dim, r), (heads, r, target.stop - target.start)
        a = torch.empty(a_shape, dtype=dtype)
        for h in range(heads):  # Kaiming-uniform per head, as LoRA's A
            nn.init.kaiming_uniform_(a[h].T, a=math.sqrt(5))
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(torch.zeros(b_shape, dtype=dtype))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The projection's output change for input ``x``, padded to its full output width."""
        x = F.dropout(x, p=self.dropout, training=self.training).to(self.a.dtype)
        if self.output_side:
            delta = torch.einsum("...i,hir,hrp->...hp", x, self.a, self.b).flatten(-2)
        else:
            per_head = x.unflatten(-1, (self.heads, self.head_dim))
            delta = torch.einsum("...hp,hpr,hrd->...d", per_head, self.a, self.b)
        return F.pad(delta * self.scale, (self.start, self.out_features - self.stop))


register_presets(PresetSpec(
    "kernel-mix", "Kernel-mix (Chen et al. 2022): per-head low-rank updates of W_q, W_v, W_o",
    lambda r, layers=None: [KernelMixConfig(r=r, alpha=2 * r, layers=layers)],
    {"r": 4}, {"r": range(1, 129)}))
