"""BitFit (Ben Zaken et al. 2022): train only the model's bias terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..families import AttentionSite
from .base import Applied, MethodConfig, PresetSpec, register_method, register_presets


@register_method
@dataclass
class BitFitConfig(MethodConfig):
    """Train every bias of the base model (LayerNorm biases included); nothing is added."""

    method: ClassVar[str] = "bitfit"

    def apply(self, model: nn.Module, sites: list[AttentionSite]) -> Applied:
        """Mark every ``*.bias`` parameter trainable."""
        biases = [name for name, _ in model.named_parameters() if name.split(".")[-1] == "bias"]
        if not biases:
            raise ValueError(f"BitFitConfig: {type(model).__name__} has no bias parameters to train "
                             "(Llama- and T5-style models have none); choose another method")
        return Applied(unfrozen=biases)


register_presets(PresetSpec("bitfit", "BitFit: bias terms only", lambda: [BitFitConfig()], layered=False))
