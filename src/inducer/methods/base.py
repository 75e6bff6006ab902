"""What every method shares: the config base class, the registry, hooks, and how modules are added.

A method is a config dataclass (subclass of :class:`MethodConfig`, registered with
:func:`register_method`) whose :meth:`MethodConfig.apply` adds modules and hooks to a model and
says which modules it added and which base parameters it trains. ``inducer.attach`` does the rest
(freezing, the task head, the attention implementation); ``inducer.detach`` undoes all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..core.families import AttentionSite, routed_sites
from ..core.naming import DEFAULT_ADAPTER, slot_name
from ..errors import (
    ConfigError,
    ConflictError,  # noqa: F401 (defined in the error taxonomy, raised here)
)

# Method configs by the "method" tag stored in adapter_config.json.
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}


def register_method(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make a method config known to attach / load_adapter by its ``method`` tag."""
    METHOD_CONFIGS[cls.method] = cls
    return cls


@dataclass(frozen=True)
class PresetSpec:
    """A named method for ``inducer.preset``: its configs from sizes, the paper's sizes, and the
    ranges the budget search (:mod:`inducer.sizing.presets`) may pick each size from.

    Attributes:
        name: the preset's name (``--method``), e.g. ``"lora"``.
        description: one line for listings and summaries.
        build: ``build(**sizes, layers=None) -> list[MethodConfig]``; ``layers`` (the top n layers)
            is passed only when ``layered``.
        sizes: the paper's sizes (also their proportions, which a budget search keeps).
        ranges: the values each size may take in a budget search (empty: nothing to size).
        layered: the search may adapt only the top n layers to reach small budgets.
        removed_at_zero: sizes whose value 0 removes a whole module (the inducer's key MLP at
            ``r_k=0``), so the count jumps there instead of following the affine trend.
    """

    name: str
    description: str
    build: Callable[..., list[MethodConfig]]
    sizes: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    layered: bool = True
    removed_at_zero: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.ranges) - set(self.sizes):
            raise ValueError(f"preset {self.name!r}: ranges {sorted(self.ranges)} need paper sizes too")
        bad = [k for k in self.removed_at_zero if k not in self.ranges or 0 not in self.ranges[k]]
        if bad:
            raise ValueError(f"preset {self.name!r}: removed_at_zero sizes {bad} need 0 in their range")

    @property
    def defaults(self) -> dict:
        """Old name of :attr:`sizes` (kept for callers that still read it)."""
        return self.sizes


# Presets by name, in the order the method modules are imported (``inducer.methods``).
PRESETS: dict[str, PresetSpec] = {}


def register_presets(*specs: PresetSpec) -> None:
    """Make presets known to ``inducer.preset`` by name (called by each method's module)."""
    for spec in specs:
        if spec.name in PRESETS:
            raise ValueError(f"preset {spec.name!r} is declared twice")
        PRESETS[spec.name] = spec


@dataclass
class Applied:
    """What one method did to a model."""

    modules: list[str] = field(default_factory=list)  # qualified names of added child modules
    unfrozen: list[str] = field(default_factory=list)  # base parameters the method trains


def check_int(owner: str, name: str, value, minimum: int) -> None:
    """Raise ``ValueError`` naming ``owner.name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(owner: str, name: str, value, allowed: tuple) -> None:
    """Raise ``ValueError`` naming ``owner.name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{owner}.{name} must be one of {allowed}, got {value!r}")


def check_layers(owner: str, layers) -> list[int] | None:
    """Validate a ``layers`` field: None (all layers) or a non-empty list of layer indices."""
    if layers is None:
        return None
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"{owner}.layers must be None (all layers) or a non-empty list of ints")
    for index in layers:
        check_int(owner, "layers[...]", index, 0)
    return list(layers)


def select_sites(sites: list[AttentionSite], layers: list[int] | None, attention: str,
                 owner: str) -> list[AttentionSite]:
    """The attention modules a config with ``layers`` and ``attention`` ("all", "self", "cross")
    adapts, among those calling the attention registry (:func:`~inducer.core.families.routed_sites`);
    a ``ValueError`` naming ``owner`` and what the model has when there are none."""
    chosen = [
        site for site in routed_sites(sites, owner)
        if not (attention == "self" and site.is_cross) and not (attention == "cross" and not site.is_cross)
        and (layers is None or site.layer in layers)
    ]
    if not chosen:
        present = sorted({s.layer for s in sites if s.layer is not None})
        cross = "cross-attention" if any(s.is_cross for s in sites) else "no cross-attention"
        raise ConfigError(f"{owner}(layers={layers}, attention={attention!r}) matches no attention module; "
                         f"this model has layers {present} and {cross}")
    return chosen


class MethodConfig:
    """Base class of method configs (each a dataclass)."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict:
        """JSON-serialisable form, as stored in ``adapter_config.json``."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> MethodConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        data = {k: v for k, v in data.items() if k != "method"}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**data)

    def inference_config(self) -> MethodConfig:
        """The config whose parameters remain at inference, which is what budgets count.

        The same config for most methods; prefix-tuning drops its reparameterisation MLP.
        """
        return self

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Add this method's modules and hooks to ``model`` for the adapter named ``adapter``;
        ``sites`` are its attention modules. Modules go into slots keyed by ``adapter``
        (:func:`add_child`), so that adapters never meet in one module name."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply()")


class MethodHook:
    """Base class of every forward (pre-)hook a method registers; ``detach`` removes them all.

    Hooks are objects (not closures) so ``copy.deepcopy`` of an adapted model re-points them at
    the copy's modules.
    """

    pre: ClassVar[bool] = False
    with_kwargs: ClassVar[bool] = False

    def register(self, module: nn.Module) -> None:
        """Register on ``module`` (as a forward pre-hook when ``pre`` is True)."""
        if self.pre:
            module.register_forward_pre_hook(self, with_kwargs=self.with_kwargs)
        else:
            module.register_forward_hook(self, with_kwargs=self.with_kwargs)


def remove_method_hooks(model: nn.Module) -> None:
    """Remove every :class:`MethodHook` from every module of ``model``."""
    for module in model.modules():
        for hooks, with_kwargs in ((module._forward_hooks, module._forward_hooks_with_kwargs),
                                   (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs)):
            for key in [k for k, hook in hooks.items() if isinstance(hook, MethodHook)]:
                del hooks[key]
                with_kwargs.pop(key, None)


def adapter_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype of the tensors a method creates for ``layer``: float32 when the layer's weights are
    half precision or quantized (integer storage such as bitsandbytes' uint8/int8), as PEFT's
    ``autocast_adapter_dtype`` does, so small updates are not lost to rounding; else the weights' own
    (float32, float64). Methods cast their tensors to the activations' dtype at use."""
    reference = next(layer.parameters(), None)
    if reference is None:
        return torch.get_default_dtype()
    return torch.promote_types(reference.dtype, torch.float32)


def execution_device(model: nn.Module, name: str) -> torch.device | None:
    """Where module ``name`` of ``model`` runs: the execution device of an accelerate hook on it or
    on a module above it (a layer offloaded to CPU or disk keeps its weights on ``meta`` between
    forwards), else the device of its first parameter not on ``meta``; None when it has none."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:depth])), "_hf_hook", None)
        for one in getattr(hook, "hooks", None) or [hook]:  # accelerate's SequentialHook holds several
            device = getattr(one, "execution_device", None)
            if device is not None:
                return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for p in model.get_submodule(name).parameters():
        if p.device.type != "meta":
            return p.device
    return None


def add_child(model: nn.Module, parent_name: str, slot: str, module: nn.Module, owner: str, *,
              adapter: str) -> str:
    """Add ``module`` in ``slot`` of ``parent`` for the adapter ``adapter`` (as ``parent.slot`` for
    ``"default"``, ``parent.slot__<adapter>`` for others: :func:`inducer.core.naming.slot_name`), on the
    parent's execution device (:func:`execution_device`; never ``meta``), and return its qualified
    name. Methods create ``module`` in :func:`adapter_dtype` of the layer it adapts.

    Raises :class:`ConflictError` if the adapter's slot is taken (two of its methods claiming it).
    """
    child = slot_name(slot, adapter)
    parent = model.get_submodule(parent_name)
    if hasattr(parent, child):
        raise ConflictError(
            f"{owner}: {parent_name or type(model).__name__}.{child} already exists; two methods in "
            "this attach claim the same slot. Keep one of them (or give them different targets/layers)."
        )
    device = execution_device(model, parent_name)
    if device is not None:
        module = module.to(device=device)
    parent.add_module(child, module)
    return f"{parent_name}.{child}" if parent_name else child
