"""One module per parameter-efficient method: its config class and its layers.

Importing this package registers every method config with :data:`METHOD_CONFIGS`.
"""

from . import (  # noqa: F401  (registration)
    adapters,
    bitfit,
    full,
    inducer_tuning,
    kernel_mix,
    lora,
    mam,
    prefix_tuning,
)
from .base import METHOD_CONFIGS, Applied, ConflictError, MethodConfig, MethodHook

__all__ = ["METHOD_CONFIGS", "Applied", "ConflictError", "MethodConfig", "MethodHook"]
