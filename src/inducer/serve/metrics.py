"""Counters and histograms for ``GET /metrics``, in the Prometheus text exposition format.

A few dozen series at most (one per adapter and endpoint), updated from the event loop and the
model's worker thread under one lock; no client library needed.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class Metrics:
    """The server's counters (requests, tokens), gauges and histograms (batch sizes, latencies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, float] = {}
        self._histograms: dict[str, dict[tuple, _Histogram]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}

    def _describe(self, name: str, kind: str, text: str) -> None:
        self._help.setdefault(name, (kind, text))

    def count(self, name: str, text: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to counter ``name`` with ``labels``."""
        with self._lock:
            self._describe(name, "counter", text)
            self._counters[name][tuple(sorted(labels.items()))] += value

    def gauge(self, name: str, text: str, value: float) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self._describe(name, "gauge", text)
            self._gauges[name] = value

    def observe(
        self, name: str, text: str, value: float, buckets: tuple[float, ...] = LATENCY_BUCKETS, **labels: str
    ) -> None:
        """Record ``value`` in histogram ``name`` with ``labels``."""
        with self._lock:
            self._describe(name, "histogram", text)
            key = tuple(sorted(labels.items()))
            series = self._histograms[name]
            if key not in series:
                series[key] = _Histogram(buckets)
            series[key].observe(value)

    def forget(self, **labels: str) -> None:
        """Drop every series whose labels include ``labels`` (e.g. a deleted adapter's), so that
        adding and deleting adapters cannot grow the metrics without bound."""
        wanted = set(labels.items())
        with self._lock:
            for table in (*self._counters.values(), *self._histograms.values()):
                for key in [k for k in table if wanted <= set(k)]:
                    del table[key]

    def counter_value(self, name: str, **labels: str) -> float:
        """The current value of a counter (0 if never counted)."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def histogram_mean(self, name: str) -> float:
        """The mean of every value a histogram recorded, over all its labels (0 if none)."""
        with self._lock:
            series = self._histograms.get(name, {}).values()
            count = sum(h.count for h in series)
            return sum(h.total for h in series) / count if count else 0.0

    def render(self) -> str:
        """Everything, in the Prometheus text format."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in sorted(self._help.items()):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(self._counters[name].items())]
                elif kind == "gauge":
                    lines.append(f"{name} {self._gauges[name]:g}")
                else:
                    for key, hist in sorted(self._histograms[name].items()):
                        for bound, n in zip(hist.buckets, hist.counts, strict=True):
                            lines.append(f"{name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {n}")
                        lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {hist.count}")
                        lines.append(f"{name}_sum{_labels(key)} {hist.total:g}")
                        lines.append(f"{name}_count{_labels(key)} {hist.count}")
        return "\n".join(lines) + "\n"
