"""BitFit (Ben Zaken et al. 2022): train only bias terms.

The paper trains the model's own biases. Llama-, T5- and Mistral-style models have none, which would
leave BitFit nothing to train; there, each linear layer of the backbone gets a bias of its own
(zero at the start, so the model is unchanged until training moves it): the biases those layers
would have had. ``add_biases`` chooses: ``None`` (default) adds them only to a model without any
bias, ``True`` to every backbone linear layer lacking one, ``False`` never (and refuses a model
without biases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..core.families import AttentionSite
from ..core.naming import DEFAULT_ADAPTER
from ..errors import ConfigError, UnsupportedModelError
from .base import (
    Applied,
    MethodConfig,
    PresetSpec,
    adapter_dtype,
    add_child,
    register_method,
    register_presets,
)
from .low_rank import AddLowRankUpdate

CHILD = "bitfit"


class AddedBias(nn.Module):
    """The bias of a linear layer that has none: ``output + bias``, zero at the start."""

    def __init__(self, features: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features, dtype=dtype))

    def update(self, _inputs: torch.Tensor) -> torch.Tensor:
        """What the layer's output gains (broadcast over every position)."""
        return self.bias


def _backbone_linears_without_bias(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    # The backbone only: a task head or output embedding is the head's business (train_head).
    backbone = getattr(model, "base_model", model)
    prefix = next((name for name, module in model.named_modules() if module is backbone), "")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear) and module.bias is None and module is not head and CHILD not in name:
            found.append((f"{prefix}.{name}" if prefix and name else prefix or name, module))
    return found


@register_method
@dataclass
class BitFitConfig(MethodConfig):
    """Train bias terms only: the model's own (LayerNorm biases included), plus added zero biases
    where the model has none (``add_biases``; see the module docstring)."""

    method: ClassVar[str] = "bitfit"
    add_biases: bool | None = None

    def __post_init__(self) -> None:
        if self.add_biases not in (None, True, False):
            raise ConfigError(
                f"BitFitConfig: add_biases must be None, True or False, got {self.add_biases!r}")

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Mark every ``*.bias`` parameter trainable; add biases to bias-free linear layers as chosen."""
        biases = [name for name, _ in model.named_parameters() if name.split(".")[-1] == "bias"]
        add = self.add_biases if self.add_biases is not None else not biases
        targets = _backbone_linears_without_bias(model) if add else []
        if not biases and not targets:
            reason = "add_biases=False" if self.add_biases is False else "it has no linear layers either"
            raise UnsupportedModelError(
                f"BitFitConfig: {type(model).__name__} has no bias parameters to train "
                f"({reason}); use BitFitConfig(add_biases=True) or another method")
        added = []
        for name, layer in targets:
            module = AddedBias(layer.out_features, dtype=adapter_dtype(layer))
            added.append(add_child(model, name, CHILD, module, "BitFitConfig", adapter=adapter))
            AddLowRankUpdate(module).register(layer)
        return Applied(modules=added, unfrozen=biases)


register_presets(PresetSpec("bitfit", "BitFit: bias terms only", lambda: [BitFitConfig()], layered=False))
