"""Full fine-tuning, expressed as a method so every experiment is "a config passed to attach"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..core.families import AttentionSite
from ..core.naming import DEFAULT_ADAPTER
from .base import Applied, MethodConfig, PresetSpec, register_method, register_presets


@register_method
@dataclass
class FullFineTuneConfig(MethodConfig):
    """Train every parameter of the base model; ``save_adapter`` then stores all of them."""

    method: ClassVar[str] = "full"

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Mark every base parameter trainable."""
        return Applied(unfrozen=[name for name, _ in model.named_parameters()])


register_presets(PresetSpec("full", "full fine-tuning: every base parameter", lambda: [FullFineTuneConfig()],
                            layered=False))
