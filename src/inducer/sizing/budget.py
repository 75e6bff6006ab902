"""Budget counts of method configs.

``count_budget(model, configs)`` is the number a parameter budget is matched against: the
parameters ``configs`` keep at inference (prefix-tuning's training-only MLP excluded), task head
excluded. It is counted on a parameter-free ("meta") twin of ``model``, so it costs no memory and
leaves ``model`` untouched. :class:`BudgetCounter` is the one counter (the budget search of
:func:`inducer.sizing.presets.preset` counts many configs on one twin); :func:`percent_of_base` the one
percentage of the base.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch
from torch import nn

from ..core.meta import meta_twin
from ..errors import UsageError
from ..methods import MethodConfig
from ..runtime.adapter import adapter_state, attach_methods, count_parameters, detach


def percent_of_base(count: int, base: int) -> float:
    """``count`` as a percentage of ``base`` parameters (the unit budgets are given in; an empty base
    counts as one parameter, so that the answer is a number, not an error)."""
    return 100.0 * count / max(base, 1)


class BudgetCounter:
    """Budget counts of config lists on one meta twin of a base model, memoised per list."""

    def __init__(self, model: nn.Module):
        self.twin = meta_twin(model)
        self.cache: dict[str, int] = {}

    def __call__(self, configs: MethodConfig | Iterable[MethodConfig]) -> int:
        """Parameters ``configs`` would add and keep at inference (attached together, so that what
        ``attach`` refuses for them together is refused here too)."""
        configs = [configs] if isinstance(configs, MethodConfig) else list(configs)
        inference = [config.inference_config() for config in configs]
        key = json.dumps([config.to_dict() for config in inference], sort_keys=True)
        if key not in self.cache:
            with torch.device("meta"):
                attach_methods(self.twin, inference)  # a throw-away twin: no save hooks
            try:
                self.cache[key] = count_parameters(self.twin).budget
            finally:
                detach(self.twin)
        return self.cache[key]


def count_budget(model: nn.Module, configs: MethodConfig | Iterable[MethodConfig]) -> int:
    """Parameters ``configs`` would add to ``model`` and keep at inference (the budget's unit).

    ``model`` is the base (no method attached); it is not changed. Raises what ``attach`` raises
    for configs that do not fit the model.
    """
    if adapter_state(model) is not None:
        raise UsageError("count_budget counts on the base model; give it before attach (or detach first)")
    return BudgetCounter(model)(configs)
