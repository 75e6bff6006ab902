"""inducer's error taxonomy: what a user can cause and fix, apart from bugs of ours.

Every error a caller (a user of the library, the command line or the server) can cause derives from
:class:`UserError`: its message is one line naming the problem and the fix. The command line prints
it and exits 2, the server answers 4xx. Anything else (a plain ``ValueError`` or ``RuntimeError`` from
inducer, torch's shape errors) is a bug: the command line shows its traceback and asks for a report.
``UserError`` derives from ``ValueError``, so code that caught ``ValueError`` keeps working.

A leaf module: it imports nothing of inducer, so every layer can raise these.
"""

from __future__ import annotations

__all__ = [
    "AdapterFormatError",
    "CheckpointError",
    "ConfigError",
    "ConflictError",
    "ModelLoadError",
    "NonFiniteLossError",
    "PeftInteropError",
    "RecipeError",
    "RunFolderError",
    "TaskError",
    "UnsupportedModelError",
    "UsageError",
    "UserError",
]


class UserError(ValueError):
    """Something the caller can fix; the message says what and how, in one line."""


class ConfigError(UserError):
    """A bad option or config value (a method config's field, a budget, a command-line option)."""


class ConflictError(ConfigError):
    """Two method configs that cannot be attached together."""


class UsageError(UserError):
    """A call made in the wrong state: no adapter attached, an unknown adapter name, already adapted."""


class UnsupportedModelError(UserError):
    """The model (or an attention module of it) cannot take the method asked for."""


class AdapterFormatError(UserError):
    """An adapter directory is missing, corrupted, from a newer format or for another base model."""


class PeftInteropError(UserError):
    """A PEFT adapter or config that inducer cannot convert."""


class TaskError(UserError):
    """A task name, data file or split that cannot be used."""


class RecipeError(ConfigError):
    """A recipe that is unknown or not valid."""


class RunFolderError(UserError):
    """An output folder that another run owns, or that is not a run folder."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from."""


class ModelLoadError(UserError, RuntimeError):
    """A base model that cannot be loaded (a wrong id or path, no hub, missing files)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN or infinite loss (usually a too high learning rate)."""
