"""The MAM adapter (He et al., ICLR 2022): prefix-tuning in attention plus a scaled parallel adapter
beside every feed-forward block ("Mix-And-Match")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from torch import nn

from ..core.families import AttentionSite
from ..core.naming import DEFAULT_ADAPTER
from .adapters import AdapterConfig
from .base import Applied, MethodConfig, PresetSpec, check_int, register_method, register_presets
from .prefix_tuning import PrefixConfig


@register_method
@dataclass
class MAMConfig(MethodConfig):
    """MAM settings: ``prefix_length`` prefixes per attention module (with Li & Liang's MLP of
    width ``reparam_hidden`` in training, or flat prefixes for None) and a parallel FFN adapter of
    width ``bottleneck`` scaled by ``scale``."""

    prefix_length: int = 16
    reparam_hidden: int | None = 512
    bottleneck: int = 64
    scale: float = 4.0
    layers: list[int] | None = None
    method: ClassVar[str] = "mam"

    def __post_init__(self) -> None:
        check_int("MAMConfig", "prefix_length", self.prefix_length, 1)
        check_int("MAMConfig", "bottleneck", self.bottleneck, 1)
        # The parts validate the rest, with their own field names in the message.
        self.parts()

    def parts(self) -> tuple[PrefixConfig, AdapterConfig]:
        """The prefix-tuning and parallel-adapter configs MAM is made of."""
        prefix = PrefixConfig(length=self.prefix_length, reparam_hidden=self.reparam_hidden,
                              layers=self.layers)
        adapter = AdapterConfig(kind="parallel", bottleneck=self.bottleneck, scale=self.scale,
                                placement="ffn", layers=self.layers)
        return prefix, adapter

    def inference_config(self) -> MAMConfig:
        """Flat prefixes: the reparameterisation MLP is training-only."""
        return replace(self, reparam_hidden=None)

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Apply the prefix and the adapter parts."""
        applied = Applied()
        for part in self.parts():
            done = part.apply(model, sites, adapter)
            applied.modules += done.modules
            applied.unfrozen += done.unfrozen
        return applied


register_presets(PresetSpec(
    "mam", "MAM adapter (He et al.): prefix l=16 + scaled parallel FFN adapter",
    lambda bottleneck, prefix_length=16, layers=None: [
        MAMConfig(prefix_length=prefix_length, bottleneck=bottleneck, layers=layers)],
    {"bottleneck": 64, "prefix_length": 16},
    {"bottleneck": range(1, 2049), "prefix_length": (1, 2, 4, 8, 16)}))
