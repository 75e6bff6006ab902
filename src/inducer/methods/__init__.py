"""One module per parameter-efficient method: its config class and its layers.

Importing this package registers every method config with :data:`METHOD_CONFIGS`.
"""

from . import inducer_tuning  # noqa: F401  (registers InducerConfig)
from .base import METHOD_CONFIGS, Applied, ConflictError, MethodConfig, MethodHook

__all__ = ["METHOD_CONFIGS", "Applied", "ConflictError", "MethodConfig", "MethodHook"]
