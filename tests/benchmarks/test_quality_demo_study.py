"""quality_demo_study: how candidates and jobs are parsed, and the paired comparisons over seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality_demo_study as study  # noqa: E402


def test_candidates_split_into_method_training_and_rate_changes():
    method, changes, training, scales = study.parse_candidate(
        "inducer,init=lora-value,b_lr_ratio=4,warmup_ratio=0.2,lr.value_b_bias=0")
    assert method == "inducer"
    assert changes == {"init": "lora-value", "b_lr_ratio": 4}
    assert training == {"warmup_ratio": 0.2}
    assert scales == {"value_b_bias": 0.0}
    assert study.parse_job("inducer,init=lora@3e-3@2") == ("inducer,init=lora", 0.003, 2)
    assert study.job_key("lora", 0.003, 0) == "lora@0.003@0"


def _row(candidate: str, seed: int, val: float, test: float, first: float) -> dict:
    return {"candidate": candidate, "lr": 0.003, "seed": seed, "validation": val, "test": test,
            "history": [[10, first], [40, val]]}


def test_paired_differences_are_a_minus_b_on_common_seeds():
    runs = [_row("a", s, 80 + s, 81 + s, 60) for s in range(4)]
    runs += [_row("b", s, 79 + s + 0.1 * s, 80 + s, 50) for s in range(5)]
    result = study.paired(runs, ("a", 0.003), ("b", 0.003))
    assert result["seeds"] == [0, 1, 2, 3]
    assert result["test"]["mean"] == pytest.approx(1.0)
    assert result["first_eval"]["mean"] == pytest.approx(10.0)
    assert result["validation"]["mean"] == pytest.approx(1 - 0.15)
    assert result["first_eval"]["verdict"] == "wins"
    rows = {r["candidate"]: r for r in study.summary_rows(runs)}
    assert rows["b"]["n"] == 5 and rows["a"]["first_eval"] == pytest.approx(60)
    assert "| `a` | 0.003 | 0,1,2,3 |" in study.render(
        {"title": "t", "environment_line": "e", "commands": ["c"], "protocol": "p",
         "rows": study.summary_rows(runs), "comparisons": [result]})
