"""Adapter names, and the one mapping between an adapter's module names in the model and in its file.

Every module an adapter adds sits in a *slot* of its parent (``inducer``, ``lora_q``, ``prefix``,
``prefix_encoder``...), keyed by the adapter's name: the slot itself for the adapter ``"default"``,
``<slot>__<name>`` for any other (``inducer__sst2``). A method receives the adapter's name and
creates its modules there (:func:`slot_name`), so adapters never share a module name and adding one
moves nothing of the others.

The adapter format stores every tensor under its plain slot (``...attention.self.inducer.key_a``),
whatever the adapter was called in the model: one adapter's file is the same whether it was saved
from a model holding it alone or next to others, and it loads under any name. Format-1 and format-2
files, written before methods knew the adapter's name, use the same plain names. No torch here: this
module is imported by the methods, the core and the format alike.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

DEFAULT_ADAPTER = "default"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")
SEPARATOR = "__"  # slots never contain it, so the first one in a module's name starts the adapter's name

__all__ = ["ADAPTER_NAME", "DEFAULT_ADAPTER", "check_adapter_name", "model_module_name", "saved_module_name",
           "slot_name", "split_slot"]


def check_adapter_name(name) -> None:
    """Refuse adapter names that cannot be part of a module name (letters, digits, ``_``, ``-``)."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ConfigError(f"adapter name must be letters, digits, '_' or '-' (e.g. 'sst2'), got {name!r}")


def slot_name(slot: str, adapter: str) -> str:
    """The child name of the module that ``adapter`` keeps in ``slot`` (``inducer`` -> ``inducer__sst2``)."""
    if SEPARATOR in slot:
        raise ValueError(f"slot names may not contain {SEPARATOR!r}, got {slot!r}")
    return slot if adapter == DEFAULT_ADAPTER else f"{slot}{SEPARATOR}{adapter}"


def split_slot(child: str) -> tuple[str, str]:
    """``(slot, adapter)`` of a child name made by :func:`slot_name`."""
    slot, separator, adapter = child.partition(SEPARATOR)
    return slot, adapter if separator else DEFAULT_ADAPTER


def saved_module_name(module: str, adapter: str) -> str:
    """The adapter-format name of the module that ``adapter`` added at ``module`` in the model."""
    parent, dot, child = module.rpartition(".")
    slot, owner = split_slot(child)
    if owner != adapter:
        raise ValueError(f"{module!r} is not a module of the adapter {adapter!r}")
    return f"{parent}{dot}{slot}"


def model_module_name(saved: str, adapter: str) -> str:
    """The name in the model of the module that ``adapter`` saved as ``saved`` (inverse of the above)."""
    parent, dot, slot = saved.rpartition(".")
    return f"{parent}{dot}{slot_name(slot, adapter)}"
