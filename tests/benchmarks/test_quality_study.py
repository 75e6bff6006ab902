"""The quality study's planning and statistics: stage 1's grid grows past an edge holding the best
rate, paired comparisons over seeds, and the runs' loss curves are plain (JSON-able) lists."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality_nlu  # noqa: E402
from lib.stats import paired, t_cdf, t_quantile, verdict  # noqa: E402


def _finish_stage1(plan, scores: dict[float, float]) -> None:
    """Hand back every ready stage-1 job with the dev accuracy ``scores`` gives its rate."""
    while True:
        job = next((j for j in plan.waiting() if j["stage"] == "1"), None)
        if job is None:
            return
        plan.ready = [(p, j) for p, j in plan.ready if j is not job]
        plan.finish({**job, "dev": scores[job["lr"]]})


def test_stage1_grid_grows_until_the_best_rate_is_interior():
    plan = quality_nlu.Plan({"1", "2"}, [0, 1, 2], ["lora"], [])
    _finish_stage1(plan, {1e-3: 80.0, 3e-3: 81.0, 1e-2: 82.0, 3e-2: 81.5})
    assert plan.chosen == {("lora", "0.5%"): 1e-2}
    tried = sorted(r["lr"] for r in plan.done.values())
    assert tried == pytest.approx([1e-3, 3e-3, 1e-2, 3e-2])
    assert sorted(j["seed"] for j in plan.waiting()) == [1, 2]  # stage 2 at the chosen rate
    rows = quality_nlu.aggregate(list(plan.done.values()), [0, 1, 2])["rows"]
    assert rows[0]["chosen_at_grid_edge"] is False and rows[0]["lr_tried"] == pytest.approx(tried)


def test_an_interior_best_rate_adds_no_stage1_job():
    plan = quality_nlu.Plan({"1", "2"}, [0, 1], ["lora"], [])
    _finish_stage1(plan, {1e-3: 80.0, 3e-3: 82.0, 1e-2: 81.0})
    assert len(plan.done) == 3 and plan.chosen == {("lora", "0.5%"): 3e-3}


def test_t_distribution_matches_closed_forms_and_tables():
    for t in (-3.0, -0.5, 0.0, 1.0, 4.0):
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-9)  # df = 2
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-9)  # Cauchy
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-5)


def test_paired_comparison_over_common_seeds():
    a = {0: 84.0, 1: 85.0, 2: 86.0, 3: 99.0}
    b = {0: 83.0, 1: 83.5, 2: 84.0}
    result = paired(a, b)
    assert result.n == 3 and result.mean == pytest.approx(1.5) and result.wins == 3
    half = 4.302653 * 0.5 / math.sqrt(3)  # std of the differences (1, 1.5, 2) is 0.5
    assert (result.t_low, result.t_high) == pytest.approx((1.5 - half, 1.5 + half), abs=1e-4)
    assert 1.0 <= result.boot_low <= result.boot_high <= 2.0
    assert verdict(result) == "wins" and verdict(paired(b, a)) == "loses"
    assert verdict(paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0})) == "ties"
    assert paired({0: 1.0}, {0: 2.0}) is None and verdict(None) == "n/a"


def test_runs_keep_their_loss_curve_as_a_list(tmp_path):
    """A run's ``loss_curve`` must be the (step, loss) pairs, not the callback object (which JSON
    would write as its repr and every later reading of the curves would lose)."""
    import inspect

    source = inspect.getsource(quality_nlu.run_job)
    assert "loss_curve=curve.points" in source
    row = {"loss_curve": [[5, 0.69], [10, 0.6]]}
    assert json.loads(json.dumps(row)) == row


def test_a_job_run_again_after_a_failure_counts_by_its_successful_run():
    failed = {"id": "2:lora@0.5%:lr=0.003:seed=0", "stage": "2", "config": "lora", "budget": "0.5%",
              "lr": 3e-3, "seed": 0, "error": "TrainingInterrupted: SIGTERM"}
    done = {**failed, "dev": 80.0, "test": 81.0, "steps": 10}
    del done["error"]
    rows = quality_nlu.aggregate([failed, done], [0])["rows"]
    assert rows[0]["n_seeds"] == 1 and rows[0]["test_mean"] == 81.0
