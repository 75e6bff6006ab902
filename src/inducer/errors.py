"""Error classes that modules on both sides of the format need (the methods' PEFT conversions raise
what the adapter format raises), kept in a leaf module so that neither has to import the other late.
``inducer.AdapterFormatError`` and ``inducer.adapter_format.AdapterFormatError`` are this class."""

from __future__ import annotations

__all__ = ["AdapterFormatError"]


class AdapterFormatError(ValueError):
    """An adapter directory is missing, corrupted, from a newer format or for another base model."""
