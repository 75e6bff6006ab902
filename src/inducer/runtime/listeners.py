"""The extension point of ``attach`` / ``detach``: what integrations do to a model that
``inducer.attach`` adapted (and undo when ``detach`` restores it), registered here so that the core
never imports an integration.

An integration registers itself by module path and function names (:func:`register`); the module is
imported at the first attach that needs it, not when ``inducer`` is imported (the save hooks import
the adapter format, which imports the core: importing them eagerly would be a circle). The package
root (``inducer/__init__.py``) registers the built-in integration, so that every adapted model's
``save_pretrained`` writes its adapter (:mod:`inducer.integrations.save_hooks`).

Only :func:`inducer.attach` notifies listeners. The parameter-free twins that counting and checking
adapt (``inducer.sizing.budget``, ``inducer.sizing.presets``, ``load_adapter``'s checks) go through
:func:`inducer.runtime.adapter.attach_methods`, which does not, so throw-away copies are never patched.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Listener", "attached", "detached", "register", "registered"]


@dataclass(frozen=True)
class Listener:
    """An integration's two functions ``fn(model)``, by module and name (imported on first use)."""

    module: str
    on_attach: str
    on_detach: str

    def function(self, which: str) -> Callable[[Any], None]:
        """``on_attach`` or ``on_detach`` (``which``), importing the module if need be."""
        return getattr(importlib.import_module(self.module), getattr(self, which))


_LISTENERS: list[Listener] = []


def register(module: str, on_attach: str, on_detach: str) -> Listener:
    """Call ``module.on_attach(model)`` after every :func:`inducer.attach` and ``module.on_detach(model)``
    after every ``detach`` (registering the same triple twice registers it once)."""
    listener = Listener(module, on_attach, on_detach)
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)
    return listener


def registered() -> list[Listener]:
    """The registered listeners, in registration order."""
    return list(_LISTENERS)


def attached(model) -> None:
    """Run every listener's ``on_attach`` on a model ``attach`` just adapted."""
    for listener in _LISTENERS:
        listener.function("on_attach")(model)


def detached(model) -> None:
    """Run the ``on_detach`` of every listener whose module is imported (one never imported has
    touched no model) on a model ``detach`` just restored."""
    for listener in _LISTENERS:
        if listener.module in sys.modules:
            listener.function("on_detach")(model)
