"""quality_nlg_seeds: rows over seeds and the sign conventions of its paired comparisons."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality_nlg_seeds  # noqa: E402


def _run(tmp_path: Path, seed: int, rows: dict[str, tuple[float, float]]) -> Path:
    """One seed's quality_nlg.json: method -> (validation loss, BLEU)."""
    methods = [{"method": m, "lr": 0.003, "parameters": 10, "validation": {"loss": loss},
                "metrics": {"bleu": bleu, "nist": 8.0, "rougeL": 90.0, "ter": 10.0 - bleu / 20},
                "train_loss_log": [[5, 3.0 - loss], [10, 2.0 - loss]]} for m, (loss, bleu) in rows.items()]
    path = tmp_path / f"s{seed}.json"
    path.write_text(json.dumps({"protocol": {"seed": seed, "description": ["p"]},
                                "environment": {"command": f"run {seed}"}, "methods": methods}))
    return path


def test_lower_loss_and_higher_bleu_count_as_better(tmp_path):
    paths = [_run(tmp_path, s, {"a": (0.20 + 0.01 * s, 90.0 + s), "b": (0.30 + 0.012 * s, 85.0 + s)})
             for s in (1, 2, 3)]
    report = quality_nlg_seeds.main([*map(str, paths), "--compare", "a:b", "--out", str(tmp_path / "out")])
    (comparison,) = report["comparisons"]
    assert comparison["val_loss"]["verdict"] == "wins" and comparison["val_loss"]["result"]["mean"] > 0
    assert comparison["bleu"]["verdict"] == "wins"
    assert comparison["bleu"]["result"]["mean"] == pytest.approx(5.0)
    assert comparison["ter"]["result"]["mean"] > 0  # a's TER is lower: better
    row = next(r for r in report["rows"] if r["method"] == "a")
    assert row["seeds"] == [1, 2, 3] and row["val_loss"][0] == pytest.approx(0.22)
    assert (tmp_path / "out.md").read_text().count("**wins**") >= 3


def test_a_seed_given_twice_is_refused(tmp_path):
    first = _run(tmp_path, 1, {"a": (0.2, 90.0)})
    copy = tmp_path / "again.json"
    copy.write_text(first.read_text())
    with pytest.raises(SystemExit, match="seed 1 is in two inputs"):
        quality_nlg_seeds.main([str(first), str(copy), "--out", str(tmp_path / "out")])


def test_the_rate_is_chosen_on_the_first_common_seed_and_edges_are_flagged(tmp_path):
    def run(seed, lr, loss):
        path = _run(tmp_path, seed, {"a": (loss, 90.0)})
        data = json.loads(path.read_text())
        data["methods"][0]["lr"] = lr
        target = tmp_path / f"s{seed}_{lr}.json"
        target.write_text(json.dumps(data))
        return target

    # 0.01 wins on seed 1 (the seed both rates ran); 0.003's extra seeds have a lower mean: ignored.
    paths = [run(1, 0.003, 0.30), run(1, 0.01, 0.25), run(2, 0.003, 0.10), run(3, 0.003, 0.10)]
    report = quality_nlg_seeds.main([*map(str, paths), "--out", str(tmp_path / "out")])
    rows = {r["lr"]: r for r in report["rows"]}
    assert rows[0.01]["chosen"] and rows[0.01]["edge"] and not rows[0.003]["chosen"]


def test_the_report_renders_again_from_its_json(tmp_path):
    paths = [_run(tmp_path, s, {"a": (0.2, 90.0 + s), "b": (0.3, 85.0)}) for s in (1, 2)]
    quality_nlg_seeds.main([*map(str, paths), "--compare", "a:b", "--out", str(tmp_path / "out")])
    again = quality_nlg_seeds.render(json.loads((tmp_path / "out.json").read_text()))
    assert again == (tmp_path / "out.md").read_text()


def test_compare_lr_pins_the_rate_the_comparisons_use(tmp_path):
    def run(seed, method_rates):
        path = _run(tmp_path, seed, {m: (loss, 90.0 + seed) for m, (_, loss) in method_rates.items()})
        data = json.loads(path.read_text())
        for row in data["methods"]:
            row["lr"] = method_rates[row["method"]][0]
        target = tmp_path / f"s{seed}_{'_'.join(str(v[0]) for v in method_rates.values())}.json"
        target.write_text(json.dumps(data))
        return target

    paths = [run(1, {"a": (0.03, 0.1)})]  # a's best rate ran one seed only
    paths += [run(s, {"a": (0.01, 0.2), "b": (0.01, 0.3)}) for s in (1, 2, 3)]
    args = [*map(str, paths), "--compare", "a:b", "--out", str(tmp_path / "out")]
    assert quality_nlg_seeds.main(args)["comparisons"][0]["val_loss"]["result"] is None  # one seed
    pinned = quality_nlg_seeds.main([*args, "--compare-lr", "a=0.01"])
    (comparison,) = pinned["comparisons"]
    assert comparison["lr_a"] == 0.01 and comparison["val_loss"]["verdict"] == "wins"
    assert "0.01 compared" in (tmp_path / "out.md").read_text()
