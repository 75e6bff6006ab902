"""``merge_and_unload``: fold linear updates into the base weights and return a plain transformers model.

LoRA and Kernel-mix add ``delta(x) = x @ D`` to a linear layer for a dense matrix ``D`` [in, out],
so the layer with weight ``W + D`` computes the same. BitFit and full fine-tuning train base
parameters in place: nothing to fold. Inducer-tuning, prefix-tuning and bottleneck adapters change
attention or add a non-linear block, which no weight of the base model can express: refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from ..methods.kernel_mix import PerHeadLowRank
from ..methods.lora import LoRAModule
from .adapter import detach
from .state import named_adapter

LINEAR_UPDATES = (LoRAModule, PerHeadLowRank)
__all__ = ["merge_and_unload"]


def _dense_update(module: nn.Module, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The update's matrix [in, out]: its output for the identity (it is linear without dropout)."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = next(module.parameters())
            identity = torch.eye(in_features, dtype=reference.dtype, device=reference.device)
            return module.update(identity).to(dtype)
    finally:
        module.train(training)


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Fold every LoRA and Kernel-mix update of the adapter ``name`` (default: the model's only or
    active adapter) into its layer's weight, remove every inducer module, hook and setting (the
    other adapters' too), and return ``model``: a plain transformers model of the base's class that
    gives that adapter's outputs (``save_pretrained`` then writes an ordinary model).

    BitFit's biases and fully fine-tuned weights are already in the base (biases BitFit added to a
    bias-free model are not, and are refused). Raises ``ValueError``
    naming the methods that cannot be merged (inducer, prefix, adapter) or a quantized layer, and
    leaves the model as it was.
    """
    entry = named_adapter(model, name, "merge_and_unload")
    unmergeable = sorted({type(model.get_submodule(module)).__name__ for module in entry.added
                          if not isinstance(model.get_submodule(module), LINEAR_UPDATES)})
    if "AddedBias" in unmergeable:
        raise UsageError(
            "merge_and_unload: BitFit added biases to layers of this model that have none, and a model of "
            "the base's class has nowhere to keep them; keep the adapted model (inducer.save_adapter)")
    if unmergeable:
        methods = sorted({c.method for c in entry.configs} - {"lora", "kernel-mix", "bitfit", "full"})
        raise UsageError(
            f"merge_and_unload: {', '.join(methods)} ({', '.join(unmergeable)}) cannot be merged into the "
            "base weights: they change attention or add non-linear blocks. Keep the adapted model (save it "
            "with inducer.save_adapter) or use LoRA, Kernel-mix or BitFit."
        )
    folds = []
    for module in entry.added:
        layer = model.get_submodule(module.rpartition(".")[0])
        weight = layer.weight
        if not weight.is_floating_point():
            raise UsageError(f"merge_and_unload: {module.rpartition('.')[0]} is quantized ({weight.dtype}); "
                             "load the base unquantized (same dtype as training) and load the adapter on it")
        conv1d = type(layer).__name__ == "Conv1D"  # transformers' GPT-2 layer: weight [in, out]
        in_features = weight.shape[0] if conv1d else weight.shape[1]
        folds.append((weight, conv1d, _dense_update(model.get_submodule(module), in_features, weight.dtype)))
    detach(model)  # undoes a prior inducer.merge first, so the weights here are the base's
    with torch.no_grad():
        for weight, conv1d, delta in folds:
            weight.add_(delta if conv1d else delta.T)
    return model
