"""Named methods with the paper's settings, and parameter-budget matching.

``preset("lora", model)`` gives the paper's LoRA settings; ``preset("lora", model, budget="0.5%")``
searches the method's sizes (ranks, lengths, bottlenecks, and if needed how many of the top layers
are adapted) for the count closest to the budget, preferring all layers and the paper's proportions.
Budgets count the parameters a method keeps at inference (prefix-tuning's reparameterisation MLP
is training-only), excluding the task head. Counting runs on a parameter-free ("meta") copy of the
model (:class:`inducer.sizing.budget.BudgetCounter`), so it costs no memory.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..methods import PRESETS, MethodConfig, PresetSpec
from ..runtime.adapter import adapter_state, count_parameters
from .budget import BudgetCounter, count_budget, percent_of_base

logger = logging.getLogger(__name__)
TOLERANCE = 0.02  # a budget is met when the count is within 2% of it

__all__ = ["PRESETS", "TOLERANCE", "PresetChoice", "PresetSpec", "parse_budget", "preset"]


@dataclass(frozen=True)
class PresetChoice:
    """What :func:`preset` chose: the configs (iterable, ready for ``attach``) and why.

    Attributes:
        name: the preset's name.
        configs: the method configs, ``attach(model, choice)`` or ``attach(model, choice.configs)``.
        sizes: the sizes chosen (``layers``: the adapted top layers, when fewer than all).
        count: parameters kept at inference, task head excluded (the budget's unit).
        budget: the budget searched for, or None for the paper's / explicit sizes.
        summary: one line saying what was chosen and how close it is.
    """

    name: str
    configs: tuple[MethodConfig, ...]
    sizes: dict
    count: int
    budget: int | None
    summary: str

    def __iter__(self):
        return iter(self.configs)

    def __len__(self) -> int:
        return len(self.configs)

    def __getitem__(self, index):
        return self.configs[index]


def parse_budget(budget: int | str | float, base: int) -> int:
    """An int count, or a percentage string of the base model's parameters (``"0.5%"``)."""
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100 * base
            else:
                value = float(text.replace(",", "").replace("_", ""))
        except ValueError as err:
            raise ConfigError(
                f"budget {budget!r} is neither a count (600000) nor a percentage ('0.5%')"
            ) from err
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value = budget
    else:
        raise ConfigError(f"budget must be an int count or a percentage string like '0.5%', got {budget!r}")
    if not value >= 1:
        raise ConfigError(f"budget {budget!r} is less than one parameter")
    return int(round(value))


def _shape_penalty(sizes: dict, paper: dict) -> float:
    """How far the size proportions are from the paper's (0 when they match)."""
    names = [k for k in paper if k in sizes]
    if len(names) < 2:
        return 0.0
    return sum(abs(math.log((sizes[a] + 1) / (sizes[names[0]] + 1))
                   - math.log((paper[a] + 1) / (paper[names[0]] + 1))) for a in names[1:])


def _affine_count(
    spec: PresetSpec, counter: BudgetCounter, layers: list[int] | None
) -> Callable[[dict], float]:
    """Predict counts from a few exact ones: every method's count is affine in each of its sizes
    (a rank, length or bottleneck multiplies a fixed per-layer cost), plus a constant jump at 0 for
    the sizes the preset declares ``removed_at_zero`` (0 removes a whole module)."""
    extra = {"layers": layers} if layers else {}
    ref = {k: max(spec.sizes.get(k, 1), 1) for k in spec.ranges}
    at_ref = counter(spec.build(**ref, **extra))
    slopes, zero_jump = {}, {}
    for size in spec.ranges:
        slopes[size] = counter(spec.build(**{**ref, size: ref[size] + 1}, **extra)) - at_ref
    for size in spec.removed_at_zero:
        at_zero = counter(spec.build(**{**ref, size: 0}, **extra))
        zero_jump[size] = at_zero - (at_ref - slopes[size] * ref[size])

    def predict(sizes: dict) -> float:
        count = at_ref + sum(slopes[k] * (sizes[k] - ref[k]) for k in spec.ranges)
        return count + sum(jump for k, jump in zero_jump.items() if sizes[k] == 0)

    predict.slopes = slopes  # type: ignore[attr-defined]
    return predict


def _candidates(spec: PresetSpec, counter: BudgetCounter, budget: int, n_layers: int):
    """Yield (sizes, predicted count): for each layer choice and each setting of the other sizes,
    the first size that brings the count nearest the budget (from the affine prediction)."""
    names = list(spec.ranges)
    first, others = names[0], names[1:]
    layer_choices: list[list[int] | None] = [None]
    if spec.layered and n_layers > 1:
        layer_choices += [list(range(n_layers - n, n_layers)) for n in range(n_layers - 1, 0, -1)]
    if len(others) <= 1:
        grid = [dict(zip(others, combo, strict=True))
                for combo in itertools.product(*(spec.ranges[o] for o in others))]
    else:  # several sizes: keep the paper's proportions, scaled together
        grid, seen = [], set()
        for step in range(-300, 301):
            scale = 2 ** (step / 50)
            combo = tuple(min(max(round(spec.sizes[o] * scale), min(spec.ranges[o])), max(spec.ranges[o]))
                          for o in others)
            if combo not in seen:
                seen.add(combo)
                grid.append(dict(zip(others, combo, strict=True)))
    values = list(spec.ranges[first])
    for layers in layer_choices:
        predict = _affine_count(spec, counter, layers)
        slope = predict.slopes[first]
        for rest in grid:
            chosen_rest = {**rest, **({"layers": layers} if layers else {})}
            base = predict({first: values[0], **rest})
            ideal = values[0] + (budget - base) / slope if slope > 0 else values[0]
            for value in {math.floor(ideal), math.ceil(ideal)}:
                value = min(max(value, values[0]), values[-1])
                chosen = {first: value, **chosen_rest}
                yield chosen, predict({first: value, **rest})


def check_method(method: str) -> None:
    """Refuse an unknown method name, listing the known ones."""
    if method not in PRESETS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(PRESETS)}")


def preset(name: str, model: nn.Module, budget: int | str | None = None,
           sizes: dict | None = None) -> PresetChoice:
    """The configs of a named method for ``model``, as a :class:`PresetChoice`.

    Without ``budget``: the paper's settings, with any ``sizes`` given explicitly replacing them
    (e.g. ``sizes={"r_k": 10, "r_v": 15}``, the paper's NLG inducer). With ``budget`` (an int count
    or ``"0.5%"`` of the base model): the sizes whose count (parameters kept at inference, task head
    excluded) is closest to the budget, within 2% where the method's granularity allows. The result's
    ``summary`` (also logged) says what was chosen and how close it is.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[name]
    if sizes is not None and budget is not None:
        raise ConfigError("preset: give a budget (searches the sizes) or explicit sizes, not both")
    unknown = set(sizes or {}) - set(spec.sizes) - {"layers"}
    if unknown:
        raise ConfigError(
            f"method {name!r} has no size(s) {sorted(unknown)}; its sizes: {sorted(spec.sizes)}"
        )

    counter = BudgetCounter(model)
    base = sum(p.numel() for p in model.parameters())
    if budget is None or not spec.ranges:
        chosen = {**spec.sizes, **(sizes or {})}
        configs = spec.build(**chosen)
        target = None if budget is None else parse_budget(budget, base)
    else:
        target = parse_budget(budget, base)
        from ..core.families import find_attention_sites

        n_layers = len({s.layer for s in find_attention_sites(model) if s.layer is not None})

        def score(item):
            # Within the tolerance: all layers first, then the paper's proportions, then the
            # closest count. Outside it (the sizes are too coarse): simply the closest count.
            candidate, count = item
            miss = abs(count - target) / target
            if miss > TOLERANCE:
                return (1, 0, 0.0, miss)
            dropped = n_layers - len(candidate["layers"]) if "layers" in candidate else 0
            return (0, dropped, round(_shape_penalty(candidate, spec.sizes), 6), miss)

        candidates = list(_candidates(spec, counter, target, n_layers))
        smallest = min(count for _, count in candidates)
        if smallest > (1 + TOLERANCE) * target:
            raise ConfigError(
                f"budget {target:,} is too small for {name!r}: its smallest setting has {smallest:,.0f} "
                f"parameters on this model. Raise the budget or choose a lighter method."
            )
        chosen, _ = min(candidates, key=score)
        # The prediction picked the sizes; the count reported below is the exact one.
        configs = spec.build(**chosen)
    count = counter(configs)
    shown = ", ".join(f"{k}={v if k != 'layers' else f'top {len(v)}'}" for k, v in chosen.items())
    summary = f"{name}: {spec.description}; {shown or 'no sizes'}; {count:,} parameters " + (
        f"({percent_of_base(count, base):.3f}% of {base:,})" if target is None else
        f"for a budget of {target:,} ({100 * (count - target) / target:+.2f}%)")
    if target is not None and spec.ranges and abs(count - target) > TOLERANCE * target:
        summary += f"; the closest this method's sizes allow is outside {TOLERANCE:.0%}"
    logger.info(summary)
    return PresetChoice(name, tuple(configs), chosen, count, target, summary)


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
            raise ConfigError(f"{name!r}: give the method configs, or a model with a method attached")
        configs = entry.configs
    configs = (configs,) if isinstance(configs, MethodConfig) else tuple(configs)
    if not configs:
        raise ConfigError(f"explicit configs for {name!r}: give at least one method config")
    # An adapted model holds these configs already: its own count; a base: counted on a meta twin.
    # (With several adapters, the chosen one's count: the others' parameters are not its budget.)
    if entry is not None:
        count = count_parameters(model, entry.name if len(state.adapters) > 1 else None).budget
    else:
        count = count_budget(model, configs)
    base = count_parameters(model).base
    sizes = {"configs": [config.to_dict() for config in configs]}
    kinds = ", ".join(type(config).__name__ for config in configs)
    share = f"{percent_of_base(count, base):.3f}% of {base:,}"
    summary = f"{name}: explicit configs ({kinds}); {count:,} parameters ({share})"
    return PresetChoice(name, configs, sizes, count, None, summary)
