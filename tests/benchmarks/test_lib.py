"""benchmarks/lib: the job pool's deadline and JSONL resume, the formatting helpers, smoke runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from lib.formatting import mean_std, pm, table  # noqa: E402
from lib.jobs import Deadline, JobList, run_jobs  # noqa: E402


class TwoStages(JobList):
    """Stage 1 jobs; when every one is back, one stage-2 job at the best value (like an LR pick)."""

    def __init__(self):
        super().__init__([{"id": f"1:{x}", "x": x} for x in (1, 2, 3)])
        self.back: list[dict] = []

    def finish(self, row: dict) -> None:
        self.back.append(row)
        if row["id"].startswith("1:") and len([r for r in self.back if r["id"].startswith("1:")]) == 3:
            best = max(r["score"] for r in self.back if r["id"].startswith("1:"))
            self.ready.append({"id": f"2:{best}", "x": best})


def square(job: dict) -> dict:
    if job["x"] == 2 and job.get("fail"):
        raise ValueError("lr too high")
    return {**job, "score": job["x"] ** 2}


def test_rows_are_logged_and_a_rerun_skips_them(tmp_path):
    log = tmp_path / "runs.jsonl"
    calls = []

    def job_fn(job):
        calls.append(job["id"])
        return square(job)

    first = run_jobs(TwoStages(), job_fn, log=log)
    assert calls == ["1:1", "1:2", "1:3", "2:9"]
    assert [json.loads(line)["id"] for line in log.read_text().splitlines()] == calls
    calls.clear()
    again = run_jobs(TwoStages(), job_fn, log=log)
    assert calls == [] and again.resumed == 4
    assert [r["id"] for r in again.rows] == [r["id"] for r in first.rows]


def test_failed_jobs_are_rows_and_are_run_again_on_resume(tmp_path):
    log = tmp_path / "runs.jsonl"
    jobs = [{"id": "a", "x": 2, "fail": True}, {"id": "b", "x": 3}]
    outcome = run_jobs(JobList(jobs), square, log=log)
    assert "lr too high" in outcome.rows[0]["error"] and outcome.rows[1]["score"] == 9
    again = run_jobs(JobList([{"id": "a", "x": 2}, {"id": "b", "x": 3}]), square, log=log)
    rows = {r["id"]: r for r in again.rows}
    assert again.resumed == 1 and rows["a"]["score"] == 4 and "error" not in rows["a"]


def test_no_job_starts_after_the_deadline():
    outcome = run_jobs(JobList([{"id": "a", "x": 1}]), square, deadline=Deadline(0.0))
    assert outcome.rows == [] and outcome.unfinished == ["a"]


def test_worker_processes_run_the_plan(tmp_path):
    outcome = run_jobs(TwoStages(), square, log=tmp_path / "runs.jsonl", workers=2)
    assert sorted(r["id"] for r in outcome.rows) == ["1:1", "1:2", "1:3", "2:9"]
    assert all("error" not in r for r in outcome.rows)


def test_formatting():
    assert mean_std([1.0, 3.0, float("nan"), None]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([]) == (None, None)
    assert pm(2.0, 0.5, 3) == "2.00 ± 0.50 (3)" and pm(None, missing="-") == "-"
    assert table(["a", "b"], [[1, 2]]) == ["| a | b |", "|---|---:|", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="align"):
        table(["a", "b"], [], align="l")


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_help(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cost_smoke():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "cost.py"), "--quick", "--models", "minilm",
                           "--no-generation", "--lengths", "16", "--methods", "lora", "inducer"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| inducer |" in done.stdout


def test_attention_cost_smoke():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "attention_cost.py"), "--quick"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "authors-style path matches the fused path" in done.stdout
