"""attach / detach / merge / count_parameters: adapting a model in place and undoing it.

Saving and loading adapters lives in :mod:`inducer.io.adapter_format`.
"""

from __future__ import annotations

import dataclasses
import types
import warnings
from dataclasses import dataclass, field

from torch import nn

from ..core.families import SkippedAttentionWarning, find_attention_sites, scan_attention
from ..core.naming import DEFAULT_ADAPTER, check_adapter_name
from ..errors import ConfigError, UsageError
from ..methods import METHOD_CONFIGS, MethodConfig
from ..methods.base import remove_method_hooks
from . import attention, listeners, seams
from .routing import (
    EndRouteFromKeyword,
    RouteFromKeyword,
    generate_with_adapter_names,
    method_hook_ids,
    remove_hooks_except,
    tag_extensions,
    wrap_new_hooks,
)
from .state import AttachState, NamedAdapter, adapter_state, task_head_names

# Re-exported: these lived here before inducer.runtime.state and inducer.core.naming held them.
__all__ = ["DEFAULT_ADAPTER", "AttachState", "NamedAdapter", "ParameterCount", "adapter_state",
           "added_parameter_names", "apply_trainable", "attach", "attach_methods", "check_adapter_name",
           "count_parameters", "detach", "merge", "task_head_names", "unmerge"]


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of an adapted model.

    Attributes:
        trainable: parameters with ``requires_grad`` (the methods' budget + task head).
        added: parameters created by ``attach``.
        base: parameters of the base model, task head included.
        head: base parameters trained as the task head (counted separately from the budget).
        unfrozen: base parameters (outside the task head) that a method trains, e.g. BitFit's biases.
        adapters: added parameters of each adapter, by name.
    """

    trainable: int
    added: int
    base: int
    head: int
    unfrozen: int = 0
    adapters: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def budget(self) -> int:
        """The methods' trainable parameters, task head excluded: ``added + unfrozen``."""
        return self.added + self.unfrozen

    @property
    def added_percent(self) -> float:
        """``budget`` as a percentage of ``base`` (for pure-addition methods, ``added`` / ``base``)."""
        return 100.0 * self.budget / max(self.base, 1)

    def __str__(self) -> str:
        unfrozen = f" + unfrozen {self.unfrozen:,}" if self.unfrozen else ""
        return (f"trainable {self.trainable:,} | added {self.added:,}{unfrozen} ({self.added_percent:.3f}% "
                f"of base) | task head {self.head:,} | base {self.base:,}")


def _as_list(configs) -> list[MethodConfig]:
    # A preset's choice (inducer.preset) carries its configs; attach takes it as it is.
    configs = getattr(configs, "configs", configs)
    configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
    if not configs:
        raise ConfigError("attach needs at least one method config, e.g. inducer.InducerConfig()")
    for config in configs:
        if not isinstance(config, MethodConfig) or METHOD_CONFIGS.get(config.method) is not type(config):
            known = ", ".join(c.__name__ for c in METHOD_CONFIGS.values())
            raise TypeError(f"attach: {type(config).__name__} is not a method config (known: {known})")
    return configs


def attach(model: nn.Module, configs, train_head: bool = True, strict: bool = False,
           name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Adapt ``model`` in place with one method config, a list of them or a preset's choice
    (``inducer.preset(...)``), as the adapter ``name``, and return it.

    Every base parameter is frozen; the methods' new parameters are trainable, and so is a task
    head that a classification-style model adds on top of its backbone (``train_head=False``
    freezes it). The model's attention implementation is switched to inducer's wrapper of it.
    If a method fails (bad config for this model, conflicting methods), the model is left as it was.
    An attention module left unadapted is named in a :class:`~inducer.core.families.SkippedAttentionWarning`
    (``strict=True``: raised as an error instead, and the model is left as it was).

    A model holds several adapters under different names (``inducer.adapters(model)``); the first
    one is active, later ones are added inactive and frozen (``inducer.set_adapter`` switches).
    Integrations registered with :mod:`inducer.runtime.listeners` run afterwards (``model.save_pretrained``
    then writes the adapter, not the base).
    """
    attach_methods(model, configs, train_head, strict, name)
    listeners.attached(model)
    return model


def attach_methods(model: nn.Module, configs, train_head: bool = True, strict: bool = False,
                   name: str = DEFAULT_ADAPTER) -> nn.Module:
    """:func:`attach` without the integrations' listeners: for the parameter-free twins that counting
    and checking adapt and throw away, which need no save hooks (``detach`` undoes either)."""
    check_adapter_name(name)
    state = adapter_state(model)
    if state is not None and name in state.adapters:
        raise UsageError(f"attach: this model is already adapted with an adapter named {name!r}; pass "
                         "another name=... to add one next to it, or call inducer.detach(model) first")
    configs = _as_list(configs)
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", SkippedAttentionWarning)
        _attach(model, configs, train_head, name)
    return model


def _start(model: nn.Module, refused: dict) -> AttachState:
    """The model's attach state, made (with the attention implementation switched) on first attach;
    ``refused``: :func:`inducer.runtime.seams.refusals`, the seam modules that get no seam."""
    state = adapter_state(model)
    if state is not None:
        return state
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    # A model whose attention never calls the registry keeps its implementation: some branch on
    # its name themselves (Falcon), and inducer's attention function would never run anyway.
    # Seam families (inducer.runtime.seams) run the implementation their seam needs instead.
    seamed = seams.install(model, skip=refused)
    registry = any(site.routed and site.name not in seamed for site in scan_attention(model)[0])
    if registry:
        implementations = attention.set_implementation(model, attention.wrapped_name)
    elif (needed := seams.required_implementation(model)) is not None:
        implementations = attention.set_implementation(model, lambda current: needed)
    else:
        implementations = {}
    state = AttachState({}, requires_grad, implementations)
    model._inducer_state = state
    # PEFT's spelling of routing: model(..., adapter_names=[...]) and generate(..., adapter_names=).
    start = RouteFromKeyword(state.router)
    start.register(model)
    EndRouteFromKeyword(start).register(model)
    if callable(getattr(model, "generate", None)):
        model.generate = types.MethodType(generate_with_adapter_names, model)
    return state


def _attach(model: nn.Module, configs: list[MethodConfig], train_head: bool, name: str) -> nn.Module:
    # Seam modules whose code changed under a new transformers: no seam, and not routed (with the
    # reason). Probed once per attach (the probe runs each seam class on a tiny input).
    refused = seams.refusals(model)
    state = _start(model, refused)
    if any(adapter.unfrozen for adapter in state.adapters.values()):
        raise UsageError("attach: this model's adapter trains base parameters (BitFit / full fine-tuning), "
                         "so no second adapter can share the base; detach it first")
    # Each method creates its modules in slots keyed by this adapter's name (inducer.core.naming), so the
    # other adapters' modules stay where they are.
    entry = NamedAdapter(name, configs, train_head)
    hooks_before = method_hook_ids(model)
    existing = set(dict(model.named_modules()))
    try:
        sites = [dataclasses.replace(site, routed=False, refusal=str(refused[site.name]))
                 if site.name in refused else site for site in find_attention_sites(model)]
        for config in configs:
            applied = config.apply(model, sites, adapter=name)
            entry.added += applied.modules
            entry.unfrozen += [n for n in applied.unfrozen if n not in entry.unfrozen]
        if entry.unfrozen and state.adapters:
            raise UsageError(f"attach: adapter {name!r} trains base parameters (BitFit / full fine-tuning), "
                             "which the model's other adapters share; give it a model of its own")
    except BaseException:
        # Undo everything, including modules a method added before it failed (and so never
        # reported): every new top-most module and every new hook goes.
        new = set(dict(model.named_modules())) - existing
        _remove_modules(model, [n for n in new if n.rpartition(".")[0] not in new])
        remove_hooks_except(model, hooks_before)
        if not state.adapters:
            detach(model)
        raise
    wrap_new_hooks(model, hooks_before, name, state.router)
    # New modules start in training mode; they follow where they are put, so an eval model (a loaded
    # adapter at inference, a server) runs no dropout in them.
    for added in entry.added:
        model.get_submodule(added).train(model.get_submodule(added.rpartition(".")[0]).training)
    tag_extensions([model.get_submodule(n) for n in entry.added], name, state.router)
    added_ids = {id(p) for n in entry.added for p in model.get_submodule(n).parameters()}
    params = dict(model.named_parameters())
    # Modules a method adds at the model root (prefix-tuning's shared encoder) are outside the backbone
    # too, but they are the method's, not the task head's.
    entry.head = [n for n in task_head_names(model) if id(params[n]) not in added_ids] if train_head else []
    entry.unfrozen = [n for n in entry.unfrozen if n not in entry.head]
    state.adapters[name] = entry
    if not state.router.active:
        state.router.active = [name]
    apply_trainable(model)
    return model


def _remove_modules(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name), child)


def apply_trainable(model: nn.Module) -> None:
    """Make exactly the active adapters' parameters (and the base ones they train) trainable."""
    state = adapter_state(model)
    active = [state.adapters[name] for name in state.router.active]
    trained_ids = {id(p) for adapter in active for n in adapter.added
                   for p in model.get_submodule(n).parameters()}
    trained_base = {n for adapter in active for n in adapter.trained_base}
    for n, p in model.named_parameters():
        p.requires_grad_(id(p) in trained_ids or n in trained_base)


def _mergeable(model: nn.Module):
    """(layer, update module) pairs of every added module that can fold into its parent layer."""
    state = adapter_state(model)
    if state is None:
        raise UsageError("this model was not adapted by inducer.attach")
    for name in state.added:
        module = model.get_submodule(name)
        if hasattr(module, "merge"):
            yield model.get_submodule(name.rpartition(".")[0]), module


def merge(model: nn.Module) -> nn.Module:
    """Fold mergeable updates (LoRA) into their layers' weights, for inference without overhead.

    Other methods stay active as they are. ``unmerge`` (or ``detach``) undoes it, up to rounding.
    A model holding several adapters is refused: they share the base weights.
    """
    state = adapter_state(model)
    if state is not None and len(state.adapters) > 1:
        raise UsageError(f"merge: the model holds the adapters {list(state.adapters)}, which share its "
                         "base weights; delete_adapter the others first, or serve them unmerged with route()")
    for layer, module in _mergeable(model):
        module.merge(layer)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: subtract the updates again (equal to the original weights up to rounding)."""
    for layer, module in _mergeable(model):
        module.unmerge(layer)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove everything ``attach`` added; the base model's state and outputs are as before.

    (After :func:`merge`, the weights are unmerged first, which restores them up to rounding.)
    """
    state = adapter_state(model)
    if state is None:
        raise UsageError("detach: this model was not adapted by inducer.attach")
    unmerge(model)
    remove_method_hooks(model)
    _remove_modules(model, state.added)
    attention.restore_implementation(model, state.implementations)
    seams.remove(model)
    if getattr(model.__dict__.get("generate"), "__func__", None) is generate_with_adapter_names:
        del model.__dict__["generate"]
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(name, p.requires_grad))
    del model._inducer_state
    listeners.detached(model)
    return model


def added_parameter_names(model: nn.Module, state: AttachState | NamedAdapter) -> list[str]:
    """Qualified names of the parameters of every module ``attach`` added (for one adapter: its own)."""
    prefixes = tuple(name + "." for name in state.added)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def count_parameters(model: nn.Module, name: str | None = None) -> ParameterCount:
    """Count trainable, added, base, task-head and unfrozen parameters (tied weights once).

    ``name``: count one adapter of the model only (its added parameters, the base ones it trains);
    the base count is the same either way. :attr:`ParameterCount.adapters` has every adapter's
    added parameters by name.
    """
    state = adapter_state(model)
    entries = dict(state.adapters) if state else {}
    if name is not None:
        if name not in entries:
            raise UsageError(f"count_parameters: no adapter named {name!r}; the model has {list(entries)}")
        entries = {name: entries[name]}
    every_added = set(added_parameter_names(model, state)) if state else set()
    by_adapter = {key: _module_parameters(model, entry.added) for key, entry in entries.items()}
    added_names = {n for names in by_adapter.values() for n in names}
    head_names = {n for entry in entries.values() for n in entry.head}
    unfrozen_names = {n for entry in entries.values() for n in entry.unfrozen}
    trainable = added = base = head = unfrozen = 0
    for n, p in model.named_parameters():
        size = p.numel()
        if n in every_added:
            added += size if n in added_names else 0
            trainable += size if n in added_names and p.requires_grad else 0
            continue
        base += size
        if p.requires_grad and (name is None or n in head_names | unfrozen_names):
            trainable += size
            head += size if n in head_names else 0
            unfrozen += size if n in unfrozen_names else 0
    counts = {key: sum(p.numel() for n, p in model.named_parameters() if n in names)
              for key, names in by_adapter.items()}
    return ParameterCount(trainable, added, base, head, unfrozen, adapters=counts)


def _module_parameters(model: nn.Module, modules: list[str]) -> set[str]:
    prefixes = tuple(module + "." for module in modules)
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
