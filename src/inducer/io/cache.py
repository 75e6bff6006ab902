"""Where inducer caches downloaded or converted assets (a leaf: the data and model loaders use it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where inducer caches downloaded or converted assets (``$INDUCER_CACHE``, default ~/.cache/inducer)."""
    return Path(os.environ.get("INDUCER_CACHE") or Path.home() / ".cache" / "inducer")
