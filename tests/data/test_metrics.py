"""Metrics come from sacrebleu / rouge-score / nltk / pycocoevalcap; checked against direct calls."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import sacrebleu

from inducer.data import metrics

PREDICTIONS = ["the cat sat on the mat .", "there is a pub near the river ."]
REFERENCES = [["the cat sat on the mat .", "a cat was sitting on the mat ."], ["a pub is near the river ."]]


def test_bleu_chrf_ter_are_sacrebleu_with_ragged_references():
    out = metrics.generation_metrics(PREDICTIONS, REFERENCES, ["bleu", "chrf", "ter"])
    streams = [[r[0] for r in REFERENCES], [REFERENCES[0][1], None]]
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score)
    assert out["ter"] == pytest.approx(sacrebleu.corpus_ter(PREDICTIONS, streams).score)
    assert 0 < out["chrf"] <= 100


def test_rouge_nist_cider_and_perfect_scores():
    names = ["rouge1", "rouge2", "rougeL", "nist"]
    if importlib.util.find_spec("pycocoevalcap"):  # an optional extra (inducer[nlg-metrics])
        names.append("cider")
    out = metrics.generation_metrics(PREDICTIONS, REFERENCES, names)
    assert set(out) == set(names)
    perfect = metrics.generation_metrics(["a b c d e"], [["a b c d e"]], ["rouge1", "rouge2", "bleu"])
    assert perfect["rouge1"] == pytest.approx(100) and perfect["bleu"] == pytest.approx(100)


def test_coqa_exact_match_and_f1_use_the_official_normalisation():
    out = metrics.generation_metrics(
        ["The red house!", "Tom"], [["a red house"], ["Tom Smith"]], ["em", "f1"]
    )
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_classification_and_regression():
    assert metrics.classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], 2) == pytest.approx(
        {"accuracy": 75.0, "f1": 80.0}
    )
    out = metrics.regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.1])
    assert out["spearman"] == pytest.approx(100.0) and out["pearson"] > 99


def test_unknown_metric_and_missing_meteor_resources(monkeypatch):
    with pytest.raises(ValueError, match="unknown generation metrics"):
        metrics.generation_metrics(["a"], [["a"]], ["bleurt"])
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # no java

    monkeypatch.setattr(metrics, "_wordnet_ready", lambda: False)
    monkeypatch.setattr(metrics, "_warned", set())
    out = metrics.generation_metrics(["a b"], [["a b"]], ["meteor", "bleu"])
    assert "meteor" not in out and "bleu" in out


def test_better_knows_lower_is_better():
    assert metrics.better("ter", 10.0, 20.0) and not metrics.better("bleu", 10.0, 20.0)
    assert metrics.better("loss", 1.0, None)


def test_meteor_survives_newlines_and_a_failing_java_process(monkeypatch):
    if not (importlib.util.find_spec("pycocoevalcap") and metrics.shutil.which("java")):
        pytest.skip("METEOR 1.5 needs pycocoevalcap and java")
    # Newlines and "|||" in generated text would desynchronise METEOR's line protocol.
    out = metrics.generation_metrics(
        ["a pub\nin the city ||| centre"], [["a pub in the city centre"]], ["meteor"]
    )
    assert out["meteor"] > 50
    from pycocoevalcap.meteor.meteor import Meteor

    def broken(self, gts, res):
        self.lock.acquire()  # as pycocoevalcap does, then fails before releasing it
        raise ValueError("could not convert string to float")

    monkeypatch.setattr(Meteor, "compute_score", broken)
    monkeypatch.setattr(metrics, "_warned", set())
    out = metrics.generation_metrics(["a b"], [["a b"]], ["meteor", "bleu"])
    assert "meteor" not in out and "bleu" in out and not metrics._METEOR


def test_java_without_pycocoevalcap_skips_meteor_and_cider(monkeypatch):
    """The optional extra missing (a fresh install) with java present: left out, not a crash."""
    real_find_spec = metrics.importlib.util.find_spec
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pycocoevalcap" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # and importing it fails
    monkeypatch.setattr(metrics, "_wordnet_ready", lambda: False)
    monkeypatch.setattr(metrics, "_warned", set())
    out = metrics.generation_metrics(["a b c d"], [["a b c d"]], ["meteor", "cider", "bleu"])
    assert "meteor" not in out and "cider" not in out and "bleu" in out
