"""Runs written by an earlier inducer still read: ``eval`` / ``generate`` / ``--resume`` on its run
folders, and its comparison results.

The folders under ``tests/fixtures/runs/`` were written once by :func:`write_fixtures` (run
``python -m tests.training.test_run_records`` from the repository root to rewrite them, which is only right
when the run record format changes on purpose and the old fixtures are kept beside the new ones).
They hold two tiny bases with their tokenizers (``base-bert``, ``base-gpt2``: ``tests/tiny.py``), a
classification run (``sst2``: inducer on the SST-2 fixture), a generation run (``xsum``:
inducer+lora on a decoder) and a comparison (``compare``: inducer and lora over two seeds). Paths in
them are relative to ``tests/fixtures/runs`` (the tests run there), except the data paths runs record
resolved: those are written as ``@FIXTURES@/...`` and put back for the checkout by :func:`runs`.
"""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from ..tiny import FIXTURES, run_cli, save_tiny, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = FIXTURES / "runs"
FAST = ["--max-length", "32", "--batch-size", "8", "--lr", "5e-3", "--quiet"]
SST2 = ["--model", "base-bert", "--task", "sst2", "--data-dir", "../tasks/sst2", "--method", "inducer",
        "--max-steps", "3", "--eval-every", "3", *FAST]  # fmt: skip
XSUM = ["--model", "base-gpt2", "--task", "xsum", "--data-dir", "../tasks/xsum", "--method", "inducer+lora",
        "--max-steps", "2", "--max-new-tokens", "3", *FAST]  # fmt: skip
COMPARE = ["--model", "base-bert", "--task", "regression", "--train-file", "../files/rating.jsonl",
           "--methods", "inducer,lora", "--budget", "2%", "--seeds", "2", "--max-steps", "2", "--lr", "1e-3",
           "--max-length", "16", "-q"]  # fmt: skip
# What the fixtures keep of each folder: not the TensorBoard logs (binary, not needed to read a run).
DROPPED = ("tensorboard", ".inducer.lock", "results.png")
PLACEHOLDER = "@FIXTURES@"  # runs record resolved data paths: these stand for this checkout's fixtures


def write_fixtures(root: Path = ROOT) -> Path:
    """Write the fixture runs (see the module docstring) with the installed inducer."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    before = Path.cwd()
    os.chdir(root)
    try:
        save_tiny("bert", Path("base-bert"))
        save_tiny("gpt2", Path("base-gpt2"))
        run_cli("train", *SST2, "--output", "sst2")
        run_cli("train", *XSUM, "--output", "xsum")
        run_cli("compare", *COMPARE, "--output", "compare")
    finally:
        os.chdir(before)
    for name in DROPPED:
        for path in root.rglob(name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _replace_in_json(root, str(FIXTURES.resolve()), PLACEHOLDER)
    return root


def _replace_in_json(root: Path, old: str, new: str) -> None:
    for path in root.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        if old in text:
            path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture runs (a resume writes into its folder), as the working directory."""
    copy = tmp_path / "runs"
    shutil.copytree(ROOT, copy)
    _replace_in_json(copy, PLACEHOLDER, str(FIXTURES.resolve()))
    for name in ("tasks", "files"):
        (tmp_path / name).symlink_to(FIXTURES / name)
    monkeypatch.chdir(copy)
    return copy


def test_eval_on_an_old_run_folder_scores_as_it_did(runs, tmp_path):
    target = tmp_path / "metrics.json"
    run_cli("eval", "--adapter", "sst2/best", "--split", "test", "--output", target, "--quiet")
    metrics = json.loads(target.read_text())["metrics"]
    saved = json.loads((runs / "sst2" / "results.json").read_text())["test"]["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])


def test_generate_on_old_run_folders(runs):
    inputs = ["--input", "a wonderful film", "--input", "dull"]
    labels = run_cli("generate", "--adapter", "sst2/best", *inputs, "-q")
    assert labels.output.count("positive") + labels.output.count("negative") == 2
    text = run_cli("generate", "--adapter", "xsum/best", "--input", "the city council voted .", "-q")
    assert "the city council voted" in text.output


def test_resume_of_an_old_run_folder(runs):
    run_cli("train", *SST2, "--output", "sst2", "--resume")  # the same run: nothing differs
    longer = [*SST2, "--max-steps", "4"]  # the last --max-steps counts
    run_cli("train", *longer, "--output", "sst2", "--resume", "--new-schedule")
    steps = [json.loads(line)["step"] for line in (runs / "sst2" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


def test_old_comparison_results_read():
    from inducer.app.compare import choose_lr
    from inducer.training.run_records import CompareResults, markdown_table

    results = CompareResults.read(ROOT / "compare")  # written before records had a version
    table = markdown_table(results.rows, "base-bert x regression, budget 2%")
    assert (ROOT / "compare" / "results.md").read_text().startswith(table)  # rendered as it was
    assert results.version == 0 and results.seeds == [42, 43] and results.budget == "2%"
    assert [row.method for row in results.rows] == ["inducer", "lora"]
    assert results.rows[0].sizes == results.runs["inducer"][0].sizes == {"r_k": 2, "r_v": 1}  # was knobs
    assert choose_lr([{"lr": 1e-3, "validation": 0.5, "select_metric": "pearson"}]) == 1e-3


def test_old_run_records_read_and_are_written_in_todays_form(runs):
    from inducer.training.run_records import RECORD_VERSION, RunRecord, RunResult

    record = RunRecord.read(runs / "sst2" / "best")
    assert record.version == 0 and record.sizes == {"r_k": 6, "r_v": 4} and record.step == 3
    assert record.kind == "classification" and record.num_labels() == 2 and record.source.task == "sst2"
    assert record.config().max_steps == 3
    data = record.to_json()
    assert "knobs" not in data and data["sizes"] == {"r_k": 6, "r_v": 4}
    assert RunRecord.from_json(data) == dataclasses.replace(record, version=RECORD_VERSION)
    generation = RunRecord.read(runs / "xsum" / "best")
    assert generation.new_tokens() == 3 and generation.new_tokens(5) == 5  # --max-new-tokens 3 saved
    saved = json.loads((ROOT / "sst2" / "results.json").read_text())
    result = RunResult.from_json(saved)
    assert result.sizes == saved["knobs"] and result.percent_of_base == saved["percent_of_base"]
    assert "knobs" not in result.to_json() and result.to_json()["version"] == RECORD_VERSION == 1


def test_new_runs_write_sizes_and_a_version(runs):
    run_cli("train", *SST2, "--output", "new")
    for path in ("new/config.json", "new/best/inducer_run.json", "new/results.json"):
        data = json.loads((runs / path).read_text())
        assert data["version"] == 1 and "sizes" in data and "knobs" not in data, path


if __name__ == "__main__":
    print(write_fixtures())
