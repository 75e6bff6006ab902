"""What ``inducer.attach`` keeps on a model: one :class:`NamedAdapter` record per adapter, in an
:class:`AttachState` that also holds what ``detach`` restores (``requires_grad``, the attention
implementation) and the model's :class:`~inducer.runtime.routing.Router`.

Everything about one adapter (its configs, the modules it added, the base parameters it trains as
task head or as part of a method, how its names map to the adapter format) lives on its record, so
callers always say which adapter they mean: :meth:`AttachState.adapter` takes a name, and without one
picks the only or the only active adapter and otherwise raises a ``ValueError`` naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..core.naming import saved_module_name
from ..errors import UsageError
from .routing import Router

HEAD_CLASS_SUFFIXES = (
    "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
)
__all__ = ["AttachState", "NamedAdapter", "adapter_state", "named_adapter", "task_head_names"]


@dataclass
class NamedAdapter:
    """One adapter of a model: what its ``attach`` did (kept in the model's :class:`AttachState`).

    Attributes:
        name: the adapter's name (``inducer.adapters(model)``); its modules' slots carry it
            (:mod:`inducer.core.naming`).
        configs: its method configs, in the order they were applied.
        train_head: whether it trains the task head (``attach(..., train_head=)``).
        added: qualified names (in the model) of the modules its methods created.
        unfrozen: base parameters its methods train (BitFit's biases, full fine-tuning).
        head: base parameters it trains as the task head.
    """

    name: str
    configs: list
    train_head: bool
    added: list[str] = field(default_factory=list)
    unfrozen: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)

    @property
    def trained_base(self) -> list[str]:
        """Base parameters this adapter trains while active: its methods' and the task head."""
        return self.unfrozen + self.head

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Qualified names of the parameters of the modules this adapter added."""
        prefixes = tuple(module + "." for module in self.added)
        return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]

    def saved_name(self, name: str) -> str:
        """The adapter-format name of the module or parameter that the model holds as ``name``: inside
        a module this adapter added, the module's plain slot (``inducer__sst2.key_a`` ->
        ``inducer.key_a``); any other name (a base parameter it trains) is the same in both."""
        parts = name.split(".")
        added = set(self.added)
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if module in added:
                rest = name[len(module):]
                return saved_module_name(module, self.name) + rest
        return name


@dataclass
class AttachState:
    """Every adapter ``attach`` added, kept on the model as ``model._inducer_state`` so ``detach``
    can undo it all.

    Attributes:
        adapters: the adapters' records by name, in the order they were added.
        requires_grad: each base parameter's ``requires_grad`` before the first attach.
        implementations: the attention implementations to restore.
        router: which adapters serve which rows (``set_adapter``, ``route``).
    """

    adapters: dict[str, NamedAdapter]
    requires_grad: dict[str, bool]
    implementations: dict
    router: Router = field(default_factory=Router)

    @property
    def added(self) -> list[str]:
        """Every module attach created, for all adapters."""
        return [name for adapter in self.adapters.values() for name in adapter.added]

    def adapter(self, name: str | None = None, caller: str = "inducer",
                pick_active: bool = True) -> NamedAdapter:
        """The adapter ``name``; without a name the model's only adapter, else (``pick_active``) its one
        active adapter. A ``ValueError`` naming the model's adapters when there is no such adapter or
        the choice is ambiguous (several adapters active, or any several without ``pick_active``)."""
        if name is not None:
            if name not in self.adapters:
                raise UsageError(f"{caller}: no adapter named {name!r}; the model has {list(self.adapters)}")
            return self.adapters[name]
        if len(self.adapters) == 1:
            return next(iter(self.adapters.values()))
        if pick_active and len(self.router.active) == 1:
            return self.adapters[self.router.active[0]]
        raise UsageError(f"{caller}: the model holds the adapters {list(self.adapters)} (active: "
                         f"{self.router.active}); pass name= to choose one")


def adapter_state(model: nn.Module) -> AttachState | None:
    """What ``attach`` did to ``model`` (None for a model it has not adapted)."""
    return getattr(model, "_inducer_state", None)


def named_adapter(model: nn.Module, name: str | None = None, caller: str = "inducer",
                  pick_active: bool = True) -> NamedAdapter:
    """The record of one adapter of ``model`` (see :meth:`AttachState.adapter`); a ``ValueError``
    naming ``caller`` for a model ``attach`` has not adapted."""
    state = adapter_state(model)
    if state is None:
        raise UsageError(f"{caller}: this model was not adapted by inducer.attach")
    return state.adapter(name, caller, pick_active)


def task_head_names(model: nn.Module) -> list[str]:
    """Base parameters outside the backbone of a classification-style model: its task head, which a
    new task trains from scratch (empty for other models). Modules an adapter added at the model's
    root are outside the backbone too; ``attach`` leaves them out of an adapter's head."""
    if not type(model).__name__.endswith(HEAD_CLASS_SUFFIXES):
        return []
    backbone = getattr(model, "base_model", model)
    if backbone is model:
        return []
    backbone_ids = {id(p) for p in backbone.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in backbone_ids]
