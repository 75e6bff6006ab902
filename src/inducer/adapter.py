"""attach / detach / merge / count_parameters: adapting a model in place and undoing it.

Saving and loading adapters lives in :mod:`inducer.adapter_format`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from . import attention
from .families import SkippedAttentionWarning, find_attention_sites
from .methods import METHOD_CONFIGS, MethodConfig
from .methods.base import remove_method_hooks

HEAD_CLASS_SUFFIXES = (
    "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
)

@dataclass
class AttachState:
    """What one ``attach`` did, kept on the model as ``model._inducer_state`` so ``detach`` can undo it."""

    configs: list
    train_head: bool
    added: list[str]  # qualified names of the modules attach created
    unfrozen: list[str]  # base parameters the methods train (BitFit's biases, full fine-tuning)
    head: list[str]  # base parameters made trainable as the task head
    requires_grad: dict[str, bool]
    implementations: dict


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of an adapted model.

    Attributes:
        trainable: parameters with ``requires_grad`` (the methods' budget + task head).
        added: parameters created by ``attach``.
        base: parameters of the base model, task head included.
        head: base parameters trained as the task head (counted separately from the budget).
        unfrozen: base parameters (outside the task head) that a method trains, e.g. BitFit's biases.
    """

    trainable: int
    added: int
    base: int
    head: int
    unfrozen: int = 0

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


def adapter_state(model: nn.Module) -> AttachState | None:
    """What ``attach`` did to ``model`` (None for a model it has not adapted)."""
    return getattr(model, "_inducer_state", None)


def _task_head_names(model: nn.Module) -> list[str]:
    """Base parameters outside the backbone of a classification-style model (a new task head)."""
    if not type(model).__name__.endswith(HEAD_CLASS_SUFFIXES):
        return []
    backbone = getattr(model, "base_model", model)
    if backbone is model:
        return []
    backbone_ids = {id(p) for p in backbone.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in backbone_ids]


def _as_list(configs) -> list[MethodConfig]:
    # A preset's choice (inducer.preset) carries its configs; attach takes it as it is.
    configs = getattr(configs, "configs", configs)
    configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
    if not configs:
        raise ValueError("attach needs at least one method config, e.g. inducer.InducerConfig()")
    for config in configs:
        if not isinstance(config, MethodConfig) or METHOD_CONFIGS.get(config.method) is not type(config):
            known = ", ".join(c.__name__ for c in METHOD_CONFIGS.values())
            raise TypeError(f"attach: {type(config).__name__} is not a method config (known: {known})")
    return configs


def attach(model: nn.Module, configs, train_head: bool = True, strict: bool = False) -> nn.Module:
    """Adapt ``model`` in place with one method config, a list of them or a preset's choice
    (``inducer.preset(...)``), and return it.

    Every base parameter is frozen; the methods' new parameters are trainable, and so is a task
    head that a classification-style model adds on top of its backbone (``train_head=False``
    freezes it). The model's attention implementation is switched to inducer's wrapper of it.
    If a method fails (bad config for this model, conflicting methods), the model is left as it was.
    An attention module left unadapted is named in a :class:`~inducer.families.SkippedAttentionWarning`
    (``strict=True``: raised as an error instead, and the model is left as it was).
    """
    if adapter_state(model) is not None:
        raise ValueError("attach: this model is already adapted; call inducer.detach(model) first")
    configs = _as_list(configs)
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", SkippedAttentionWarning)
        return _attach(model, configs, train_head)


def _attach(model: nn.Module, configs: list[MethodConfig], train_head: bool) -> nn.Module:
    sites = find_attention_sites(model)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    implementations = attention.set_implementation(model, attention.wrapped_name)
    state = AttachState(configs, train_head, [], [], [], requires_grad, implementations)
    model._inducer_state = state
    existing = set(dict(model.named_modules()))
    try:
        for config in configs:
            applied = config.apply(model, sites)
            state.added += applied.modules
            state.unfrozen += [n for n in applied.unfrozen if n not in state.unfrozen]
    except BaseException:
        # Undo everything, including modules a method added before it failed (and so never
        # reported): every new top-most module goes.
        new = set(dict(model.named_modules())) - existing
        state.added = [n for n in new if n.rpartition(".")[0] not in new]
        detach(model)
        raise
    added_ids = {id(p) for name in state.added for p in model.get_submodule(name).parameters()}
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(id(p) in added_ids)
    # Modules a method adds at the model root (prefix-tuning's shared encoder) are outside the backbone
    # too, but they are the method's, not the task head's.
    head = [n for n in _task_head_names(model) if id(params[n]) not in added_ids] if train_head else []
    state.head = head
    state.unfrozen = [n for n in state.unfrozen if n not in head]
    for name in state.unfrozen + head:
        params[name].requires_grad_(True)
    return model


def _mergeable(model: nn.Module):
    """(layer, update module) pairs of every added module that can fold into its parent layer."""
    state = adapter_state(model)
    if state is None:
        raise ValueError("this model was not adapted by inducer.attach")
    for name in state.added:
        module = model.get_submodule(name)
        if hasattr(module, "merge"):
            yield model.get_submodule(name.rpartition(".")[0]), module


def merge(model: nn.Module) -> nn.Module:
    """Fold mergeable updates (LoRA) into their layers' weights, for inference without overhead.

    Other methods stay active as they are. ``unmerge`` (or ``detach``) undoes it, up to rounding.
    """
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
        raise ValueError("detach: this model was not adapted by inducer.attach")
    unmerge(model)
    remove_method_hooks(model)
    for name in state.added:
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name), child)
    attention.restore_implementation(model, state.implementations)
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(name, p.requires_grad))
    del model._inducer_state
    return model


def added_parameter_names(model: nn.Module, state: AttachState) -> list[str]:
    """Qualified names of the parameters of every module ``attach`` added."""
    prefixes = tuple(name + "." for name in state.added)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable, added, base, task-head and unfrozen parameters (tied weights once)."""
    state = adapter_state(model)
    added_names = set(added_parameter_names(model, state)) if state else set()
    head_names = set(state.head) if state else set()
    unfrozen_names = set(state.unfrozen) if state else set()
    trainable = added = base = head = unfrozen = 0
    for name, p in model.named_parameters():
        n = p.numel()
        trainable += n if p.requires_grad else 0
        if name in added_names:
            added += n
            continue
        base += n
        if p.requires_grad:
            head += n if name in head_names else 0
            unfrozen += n if name in unfrozen_names else 0
    return ParameterCount(trainable, added, base, head, unfrozen)
