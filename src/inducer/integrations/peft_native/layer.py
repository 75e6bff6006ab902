"""PEFT's layout for inducer's modules: one :class:`InducerTunerLayer` per slot, adapters by name.

``inducer.attach`` puts an adapter's module in a slot of its parent (``attn.inducer``,
``attn.inducer__b``: :mod:`inducer.core.naming`). PEFT and transformers find adapter tensors by other
rules: the adapter's name must be one component of every parameter name (transformers' ``load_adapter``
loads only those), the component before it must start with the method's prefix (``inducer_``:
transformers inserts the adapter's name after it when it loads a file), and the module that
``set_adapter`` / ``disable_adapters`` / ``delete_adapter`` reach must be a ``BaseTunerLayer`` whose
own name lacks the prefix (PEFT's ``delete_adapter`` skips those). So after attaching, each module
moves to ``<parent>.peft_<slot>.inducer_modules.<adapter>``: the same object (hooks and routing keep
pointing at it), the same computation; :class:`PeftNamedAdapter` keeps the one mapping to the adapter
format's plain names (``attn.inducer.key_a``), so ``inducer.save_adapter`` still writes our format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...core.naming import saved_module_name, split_slot
from ...methods.extension import AttentionExtension, ExtensionHolder
from ...runtime.adapter import detach
from ...runtime.named_adapters import delete_adapter as delete_named_adapter
from ...runtime.state import NamedAdapter, adapter_state

HOLDER_PREFIX = "peft_"  # + the slot: the BaseTunerLayer's child name (never contains "inducer_")
MODULES = "inducer_modules"  # the adapters' ModuleDict: starts with the PEFT prefix
__all__ = ["HOLDER_PREFIX", "MODULES", "InducerTunerLayer", "PeftNamedAdapter", "relocate", "remove_holders"]


@dataclass
class PeftNamedAdapter(NamedAdapter):
    """A :class:`~inducer.runtime.state.NamedAdapter` whose modules sit in PEFT's layout; ``saved_paths`` maps
    each module's path in the model to its adapter-format name."""

    saved_paths: dict[str, str] = field(default_factory=dict)

    def saved_name(self, name: str) -> str:
        """The adapter-format name of ``name`` (``...peft_inducer.inducer_modules.b.key_a`` ->
        ``...inducer.key_a``); names outside the adapter's modules are the same in both."""
        for module, saved in self.saved_paths.items():
            if name == module or name.startswith(module + "."):
                return saved + name[len(module):]
        return name


class _Root:
    """The model the holders belong to (a plain object, so it is no submodule of theirs): deleting
    an adapter removes hooks all over the model. ``copy.deepcopy`` of the model copies it along."""

    def __init__(self, model: nn.Module):
        self.model = model


class InducerTunerLayer(ExtensionHolder, BaseTunerLayer):
    """The ``BaseTunerLayer`` of one slot of one module: the adapters' modules by name, switched
    through the model's :class:`~inducer.runtime.routing.Router` (so PEFT's and transformers' ``set_adapter``,
    ``disable_adapters``, ``delete_adapter`` and inducer's own act on the same state)."""

    adapter_layer_names = (MODULES,)

    def __init__(self, slot: str, root: _Root):
        super().__init__()
        self.slot = slot
        self.inducer_modules = nn.ModuleDict()
        self._root = root
        self.merged_adapters = []

    def extra_repr(self) -> str:
        return f"slot={self.slot!r}"

    def held_extensions(self) -> list[AttentionExtension]:
        """The attention extensions among this slot's modules (inducers, prefixes)."""
        return [m for m in self.inducer_modules.values() if isinstance(m, AttentionExtension)]

    def _router(self):
        state = adapter_state(self._root.model)
        return None if state is None else state.router

    @property
    def active_adapter(self) -> list[str]:
        router = self._router()
        return [] if router is None else list(router.active)

    @property
    def disable_adapters(self) -> bool:
        router = self._router()
        return router is None or router.disabled

    def set_adapter(self, adapter_names: str | Sequence[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_names`` (PEFT's semantics: their tensors trainable unless
        ``inference_mode``, the others' frozen)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        router = self._router()
        if router is not None:
            state = adapter_state(self._root.model)
            router.active = [n for n in names if n in state.adapters]
        for key, module in self.inducer_modules.items():
            module.requires_grad_(key in names and not inference_mode)

    def enable_adapters(self, enabled: bool) -> None:
        """Enable (the active adapters, trainable again) or disable every adapter of the model."""
        router = self._router()
        if router is None:
            return
        if enabled:
            router.disabled = False
            self.set_adapter(router.active)
        else:
            router.disabled = True
            self.inducer_modules.requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name`` from the whole model (the first holder does it, the others find it
        gone); as in PEFT, when no active adapter is left the first remaining one (by name) becomes active."""
        model = self._root.model
        state = adapter_state(model)
        if state is None or adapter_name not in state.adapters:
            return
        if len(state.adapters) == 1:
            detach(model)
            return
        delete_named_adapter(model, adapter_name)
        if not state.router.active:
            state.router.active = [sorted(state.adapters)[0]]

    def _all_available_adapter_names(self) -> list[str]:
        return sorted(self.inducer_modules.keys())


def _holders(model: nn.Module) -> list[InducerTunerLayer]:
    return [m for m in model.modules() if isinstance(m, InducerTunerLayer)]


def relocate(model: nn.Module, name: str) -> PeftNamedAdapter:
    """Move the modules that ``attach`` just added for adapter ``name`` into PEFT's layout (see the
    module docstring) and record the adapter as a :class:`PeftNamedAdapter`."""
    state = adapter_state(model)
    entry = state.adapters[name]
    existing = _holders(model)
    root = existing[0]._root if existing else _Root(model)
    saved_paths: dict[str, str] = {}
    for module_name in entry.added:
        parent_name, _, child = module_name.rpartition(".")
        slot, _owner = split_slot(child)
        parent = model.get_submodule(parent_name)
        module = parent._modules.pop(child)
        holder_name = HOLDER_PREFIX + slot
        holder = parent._modules.get(holder_name)
        if holder is None:
            holder = InducerTunerLayer(slot, root)
            holder.train(parent.training)
            parent.add_module(holder_name, holder)
        holder.inducer_modules[name] = module
        new_name = ".".join(p for p in (parent_name, holder_name, MODULES, name) if p)
        saved_paths[new_name] = saved_module_name(module_name, name)
    values = {f.name: getattr(entry, f.name) for f in fields(NamedAdapter)}
    values["added"] = list(saved_paths)
    record = PeftNamedAdapter(**values, saved_paths=saved_paths)
    state.adapters[name] = record
    return record


def remove_holders(model: nn.Module) -> None:
    """Remove the (empty) holders once the model has no inducer adapter left (PEFT's ``unload``)."""
    for module in list(model.modules()):
        for child_name, child in list(module._modules.items()):
            if isinstance(child, InducerTunerLayer) and not len(child.inducer_modules):
                del module._modules[child_name]
