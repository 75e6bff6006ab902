"""One module per parameter-efficient method: its config class, its layers, its presets and (where
PEFT can express it) its PEFT conversion.

Importing this package imports every module in :data:`METHOD_MODULES`, in order, which registers
each method config with :data:`METHOD_CONFIGS` and each preset with :data:`PRESETS` (whose order,
the order of listings, is this one).
"""

import importlib

from .base import METHOD_CONFIGS, PRESETS, Applied, ConflictError, MethodConfig, MethodHook, PresetSpec
from .extension import AttentionExtension

METHOD_MODULES = (
    "full", "bitfit", "prefix_tuning", "lora", "adapters", "mam", "kernel_mix", "inducer_tuning", "combos",
)
for _name in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["METHOD_CONFIGS", "METHOD_MODULES", "PRESETS", "Applied", "AttentionExtension", "ConflictError",
           "MethodConfig", "MethodHook", "PresetSpec"]
