"""Many adapters on one base: list, switch, disable, delete and route them per row.

    inducer.attach(model, InducerConfig(), name="sst2")
    inducer.attach(model, LoRAConfig(), name="mnli")      # next to it, inactive
    inducer.set_adapter(model, "mnli")
    with inducer.route(model, ["sst2", "mnli", None]):    # row i uses adapter i (None: the base)
        model(**batch)

Adding adapters is :func:`inducer.attach` / :func:`inducer.load_adapter` with ``name=``; saving one
is :func:`inducer.save_adapter` with ``name=``. How the rows are routed: :mod:`inducer.runtime.routing`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from ..errors import UsageError
from .adapter import apply_trainable, detach
from .attention import current_implementations, restore_implementation
from .routing import check_routes, remove_adapter_hooks
from .state import AttachState, adapter_state

__all__ = ["adapters", "delete_adapter", "disable_adapter", "route", "set_adapter"]


def _state(model: nn.Module, caller: str) -> AttachState:
    state = adapter_state(model)
    if state is None:
        raise UsageError(f"{caller}: this model has no adapter; add one with inducer.attach(model, config)")
    return state


def _known(state: AttachState, names: list[str], caller: str) -> None:
    unknown = [name for name in names if name not in state.adapters]
    if unknown:
        raise UsageError(f"{caller}: no adapter named {unknown[0]!r}; the model has {list(state.adapters)}")


def adapters(model: nn.Module) -> list[str]:
    """The names of the model's adapters, in the order they were added (empty for a base model)."""
    state = adapter_state(model)
    return list(state.adapters) if state else []


def active_adapters(model: nn.Module) -> list[str]:
    """The adapters every row uses when nothing is routed, in composition order."""
    return list(_state(model, "active_adapters").router.active)


def set_adapter(model: nn.Module, name: str | Sequence[str]) -> nn.Module:
    """Make ``name`` the active adapter (a list: several, composed in that order); only the active
    adapters' parameters are trainable, the others are frozen and leave the outputs alone."""
    state = _state(model, "set_adapter")
    names = [name] if isinstance(name, str) else list(name)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"set_adapter: give one adapter name or a list of distinct names, got {name!r}")
    _known(state, names, "set_adapter")
    state.router.active = names
    apply_trainable(model)
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model is exactly its base (bit-identical outputs): no adapter runs."""
    state = _state(model, "disable_adapter")
    _refuse_merged(model, "disable_adapter")
    before, implementations = state.router.disabled, current_implementations(model)
    state.router.disabled = True
    # The model's own attention functions too, not inducer's wrappers of them: the same masks and
    # kernels the base model picks (T5's differ in the last bit otherwise).
    restore_implementation(model, state.implementations)
    try:
        yield model
    finally:
        restore_implementation(model, implementations)
        state.router.disabled = before


@contextmanager
def route(model: nn.Module, names: Sequence[str | None]) -> Iterator[nn.Module]:
    """Inside the block, row i of every batch uses adapter ``names[i]`` (None: the base model).

    Batches that repeat each row k times (beam search, ``num_return_sequences``) repeat the routing
    with them. Works in training too: each adapter gets the gradient of its own rows only (make the
    adapters to train active with ``set_adapter(model, [...])``).
    """
    state = _state(model, "route")
    names = check_routes(names, state.adapters, "route")
    _refuse_merged(model, "route")
    router = state.router
    before = router.routes
    router.set_routes(names)
    try:
        yield model
    finally:
        router.set_routes(before)


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove one adapter's modules and hooks; the other adapters are untouched (deleting the last
    one is :func:`inducer.detach`)."""
    state = _state(model, "delete_adapter")
    _known(state, [name], "delete_adapter")
    if len(state.adapters) == 1:
        return detach(model)
    entry = state.adapters.pop(name)  # merge() refuses models with several adapters: none is merged
    remove_adapter_hooks(model, name)
    for module_name in entry.added:
        parent, _, child = module_name.rpartition(".")
        delattr(model.get_submodule(parent), child)
    state.router.active = [n for n in state.router.active if n != name]
    apply_trainable(model)
    return model


def _refuse_merged(model: nn.Module, caller: str) -> None:
    # Only added modules merge (LoRA), and only on a model with one adapter (merge refuses more):
    # looking at those alone keeps route() cheap to enter for every step.
    state = adapter_state(model)
    if len(state.adapters) > 1:
        return
    if any(getattr(model.get_submodule(name), "merged", False) for name in state.added):
        raise UsageError(f"{caller}: LoRA is merged into the base weights; call inducer.unmerge(model) first")
