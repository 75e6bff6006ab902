"""Which base model an adapter or a run belongs to, computed here alone:

- :func:`fingerprint`: architecture and parameter shapes (an adapter's ``adapter_config.json``,
  checked on every load: the adapter fits this base);
- :func:`base_weights_sha256`: the base's weights too (a run's ``config.json``: ``--resume`` continues
  on the very same base, not another of the same shapes);
- :func:`base_model_source`: where it was loaded from, so an adapter folder alone can be loaded by
  ``inducer.from_pretrained``.

Both identities hash the same parameters (those of the base: anything ``attach`` added is left out).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from ..runtime.adapter import adapter_state, added_parameter_names

__all__ = ["base_model_source", "base_weights_sha256", "fingerprint", "logical_shape"]


def logical_shape(parameter: torch.Tensor) -> tuple[int, ...]:
    """The shape a parameter stands for: bitsandbytes' 4-bit weights are stored packed (and repacked
    by its CPU kernel on first use), their ``quant_state`` keeps the layer's real shape."""
    shape = getattr(getattr(parameter, "quant_state", None), "shape", None)
    return tuple(shape) if shape is not None else tuple(parameter.shape)


def base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``model``'s named parameters less those ``attach`` added: the base's."""
    state = adapter_state(model)
    skip = set(added_parameter_names(model, state)) if state else set()
    return ((name, p) for name, p in model.named_parameters() if name not in skip)


def fingerprint(model: nn.Module) -> dict:
    """Architecture and parameter shapes of the base model (ignoring anything attach added); a
    quantized base has the fingerprint of its unquantized self."""
    shapes = [(name, logical_shape(p)) for name, p in base_parameters(model)]
    lines = [f"{name}:{shape}" for name, shape in shapes]
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(math.prod(shape) for _, shape in shapes),
        "shapes_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def base_weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and values of ``model``'s base parameters (not those
    ``attach`` added): tells two bases of the same shapes apart. Meta parameters count by shape only."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in base_parameters(model):
            digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}\n".encode())
            if parameter.device.type != "meta":
                flat = parameter.detach().reshape(-1).cpu().contiguous()
                digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_model_source(model: nn.Module) -> dict:
    """``base_model_name_or_path`` (the hub id or folder the base was loaded from) and ``revision``
    (its hub commit) of ``model``, where transformers recorded them; empty for a model built in code."""
    config = getattr(model, "config", None)
    source = {}
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if isinstance(name, str) and name:
        source["base_model_name_or_path"] = name
    revision = getattr(config, "_commit_hash", None)
    if isinstance(revision, str) and revision:
        source["revision"] = revision
    return source
