"""Budget counts of explicit method configs, and configs given by hand described as a preset choice.

``count_budget(model, configs)`` is the number a parameter budget is matched against: the
parameters ``configs`` keep at inference (prefix-tuning's training-only MLP excluded), task head
excluded. It is counted on a parameter-free ("meta") twin of ``model``, so it costs no memory and
leaves ``model`` untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .adapter import adapter_state, attach_methods, count_parameters
from .meta import meta_twin
from .methods import MethodConfig
from .presets import PresetChoice


def count_budget(model: nn.Module, configs: MethodConfig | Iterable[MethodConfig]) -> int:
    """Parameters ``configs`` would add to ``model`` and keep at inference (the budget's unit).

    ``model`` is the base (no method attached); it is not changed. Raises what ``attach`` raises
    for configs that do not fit the model.
    """
    if adapter_state(model) is not None:
        raise ValueError("count_budget counts on the base model; give it before attach (or detach first)")
    configs = [configs] if isinstance(configs, MethodConfig) else list(configs)
    twin = meta_twin(model)
    with torch.device("meta"):
        attach_methods(twin, [config.inference_config() for config in configs])  # no save hooks on a twin
    return count_parameters(twin).budget


def explicit_choice(
    name: str, model: nn.Module, configs: MethodConfig | Iterable[MethodConfig] | None = None,
    adapter: str | None = None,
) -> PresetChoice:
    """Hand-made ``configs`` (None: those of the adapter ``adapter`` of ``model``, by default its only
    or active one) described as a :class:`PresetChoice` named ``name``, which the training and
    comparison routes record: ``sizes`` holds each config's fields, ``count`` their budget count on
    ``model``."""
    state = adapter_state(model)
    entry = None
    if state is not None:
        entry = state.adapter(adapter, f"explicit configs for {name!r}")
    if configs is None:
        if entry is None:
            raise ValueError(f"{name!r}: give the method configs, or a model with a method attached")
        configs = entry.configs
    configs = (configs,) if isinstance(configs, MethodConfig) else tuple(configs)
    if not configs:
        raise ValueError(f"explicit configs for {name!r}: give at least one method config")
    # An adapted model holds these configs already: its own count; a base: counted on a meta twin.
    # (With several adapters, the chosen one's count: the others' parameters are not its budget.)
    if entry is not None:
        count = count_parameters(model, entry.name if len(state.adapters) > 1 else None).budget
    else:
        count = count_budget(model, configs)
    base = count_parameters(model).base
    sizes = {"configs": [config.to_dict() for config in configs]}
    kinds = ", ".join(type(config).__name__ for config in configs)
    share = f"{100 * count / max(base, 1):.3f}% of {base:,}"
    summary = f"{name}: explicit configs ({kinds}); {count:,} parameters ({share})"
    return PresetChoice(name, configs, sizes, count, None, summary)
