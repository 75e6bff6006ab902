"""The versions of PEFT and lm-evaluation-harness whose internals the integrations were tested on.

:mod:`inducer.integrations.peft_native` extends PEFT's closed ``PeftType`` enum and overrides a
``BaseTuner``'s private state-dict hooks; :mod:`inducer.integrations.lm_eval` subclasses lm-eval's
``HFLM``. Those are internals that change between minor releases, so an untested installed version
must fail where the integration is imported, in one line naming what to install, and never later at
a training or evaluation step. Read with :mod:`importlib.metadata` (no import of the package itself).
"""

from __future__ import annotations

from importlib import metadata

from ...errors import UserError

# distribution -> (lowest tested, first release not accepted). Keep in step with the lock file.
TESTED: dict[str, tuple[str, str]] = {
    "peft": ("0.21.2", "0.22"),
    "lm_eval": ("0.4.13", "0.5"),
}
__all__ = ["TESTED", "IncompatibleVersionError", "check_version"]


class IncompatibleVersionError(UserError, ImportError):
    """An installed PEFT / lm-eval outside the range an integration was tested on."""


def _parse(version: str) -> tuple[int, ...]:
    """``"0.21.2"`` -> ``(0, 21, 2)``; stops at the first non-numeric part (``"0.22.0.dev0"`` ->
    ``(0, 22, 0)``)."""
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def check_version(distribution: str, integration: str) -> str:
    """The installed version of ``distribution``; :class:`IncompatibleVersionError` (one line) when it
    is missing or outside :data:`TESTED`."""
    low, high = TESTED[distribution]
    wanted = f"{distribution}>={low},<{high}"
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise IncompatibleVersionError(f"{integration} needs {distribution}, which is not installed: "
                                       f"pip install '{wanted}'") from None
    if not _parse(low) <= _parse(installed) < _parse(high):
        raise IncompatibleVersionError(f"{integration} was tested with {wanted}, but {distribution} "
                                       f"{installed} is installed: pip install '{wanted}'")
    return installed
