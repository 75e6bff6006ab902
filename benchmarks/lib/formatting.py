"""Number formatting and markdown tables shared by the benchmark renderers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

MIB = 2**20


def finite(values: Iterable) -> list[float]:
    """The values that are finite numbers (failed runs leave None or NaN)."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_std(values: Iterable) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (std 0 for one, None for none)."""
    kept = finite(values)
    if not kept:
        return None, None
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else 0.0)


def pm(mean: float | None, std: float | None = None, n: int | None = None, digits: int = 2,
       missing: str = "n/a", scale: float = 1.0) -> str:
    """``mean ± std`` (std left out when None), with ``(n)`` appended when n is given."""
    if mean is None:
        return missing
    text = f"{scale * mean:.{digits}f}"
    if std is not None:
        text += f" ± {scale * std:.{digits}f}"
    return text + (f" ({n})" if n is not None else "")


def number(value: float | None, digits: int = 2, missing: str = "n/a") -> str:
    """A float with ``digits`` decimals, or ``missing`` for None."""
    return missing if value is None else f"{value:.{digits}f}"


def ms(seconds: float | None, digits: int = 0) -> str:
    """Seconds as milliseconds with thousands separators ("n/a" for None)."""
    return "n/a" if seconds is None else f"{seconds * 1e3:,.{digits}f}"


def mib(nbytes: float | None) -> str:
    """Bytes as MiB with one decimal ("n/a" for None)."""
    return "n/a" if nbytes is None else f"{nbytes / MIB:,.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> list[str]:
    """A markdown table as lines; ``align`` has one letter per column, ``l`` or ``r`` (default:
    the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"table: {len(header)} columns but align {align!r} has {len(align)} letters")
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
