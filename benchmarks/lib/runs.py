"""Reading what a training run wrote to its output folder."""

from __future__ import annotations

import json
from pathlib import Path


def train_losses(out_dir: Path | None, digits: int = 4) -> list[list[float]]:
    """(step, training loss) pairs from a run's ``metrics.jsonl`` (one every ``log_every`` steps);
    empty where the run wrote no folder."""
    if out_dir is None or not (out_dir / "metrics.jsonl").is_file():
        return []
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [[r["step"], round(float(r["loss"]), digits)] for r in rows if r.get("split") == "train"]
