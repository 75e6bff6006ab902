"""Paired comparisons over seeds: Student's t interval and test, and a paired bootstrap interval.

Two methods run with the same seeds share the data order and (for the frozen part) the model, so
their per-seed scores are paired; the difference per seed is what these functions summarise. No
SciPy here: the t distribution's CDF is integrated numerically (Simpson's rule on its density).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (absolute error < 1e-9)."""
    if df < 1:
        raise ValueError(f"t_cdf: df must be >= 1, got {df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    # Integrate from 0 to |t| in atan space, where the heavy tail becomes a bounded interval.
    upper = math.atan(abs(t))
    steps = 2000
    h = upper / steps

    def g(u: float) -> float:
        return density(math.tan(u)) / math.cos(u) ** 2

    area = g(0.0) + g(upper) + sum((4 if i % 2 else 2) * g(i * h) for i in range(1, steps))
    half = area * h / 3
    return 0.5 + math.copysign(half, t)


def t_quantile(p: float, df: int) -> float:
    """The t value with ``t_cdf(t, df) == p`` (bisection; 0 < p < 1)."""
    low, high = -1e3, 1e3
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Paired:
    """``a - b`` over the seeds both have: mean, 95% t interval, two-sided p, bootstrap interval."""

    n: int
    mean: float
    std: float
    t_low: float
    t_high: float
    p_value: float | None
    boot_low: float
    boot_high: float
    wins: int  # seeds where a > b

    def to_dict(self) -> dict:
        """Plain fields, for JSON."""
        return asdict(self)


def paired(a: dict, b: dict, reps: int = 10_000, seed: int = 0) -> Paired | None:
    """Compare two methods' scores ``{seed: score}`` on their common seeds; None below 2 seeds.

    The t interval and p-value assume normal per-seed differences (the usual paired t-test); the
    bootstrap interval resamples seeds with replacement (percentile method), which with 3 seeds
    can only take a few distinct values: read it next to the t interval, not instead of it."""
    common = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in common if a[s] is not None and b[s] is not None]
    n = len(diffs)
    if n < 2:
        return None
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    if std > 0:
        t = mean / (std / math.sqrt(n))
        p_value = 2 * (1 - t_cdf(abs(t), n - 1))
    else:
        p_value = None if mean == 0 else 0.0
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(reps))
    return Paired(n, mean, std, mean - half, mean + half, p_value,
                  means[int(0.025 * reps)], means[int(0.975 * reps) - 1], sum(d > 0 for d in diffs))


def verdict(result: Paired | None) -> str:
    """``wins`` / ``loses`` when the 95% t interval excludes 0, else ``ties`` (``n/a`` if no pair)."""
    if result is None:
        return "n/a"
    if result.t_low > 0:
        return "wins"
    if result.t_high < 0:
        return "loses"
    return "ties"


def describe(result: Paired | None, digits: int = 2) -> str:
    """One cell: ``+0.31 [-0.52, +1.14], p 0.31 (2/3)`` (t interval, p, seeds won)."""
    if result is None:
        return "n/a"
    p = "n/a" if result.p_value is None else f"{result.p_value:.2f}"
    return (f"{result.mean:+.{digits}f} [{result.t_low:+.{digits}f}, {result.t_high:+.{digits}f}], "
            f"p {p} ({result.wins}/{result.n})")


__all__ = ["Paired", "describe", "paired", "t_cdf", "t_quantile", "verdict"]
