"""Task metrics, computed by the standard packages (never re-implemented).

* classification: accuracy, F1 (binary: of class 1; multi-class: macro) from the predictions;
* regression: Pearson and Spearman correlation, mean squared error (numpy / pandas);
* data-to-text and summaries: sacrebleu (BLEU, chrF, TER), rouge-score (ROUGE-1/2/L, best over
  references), NLTK (NIST), pycocoevalcap (CIDEr; METEOR 1.5, which needs ``java``), or NLTK's
  METEOR when WordNet is installed;
* CoQA: exact match and token F1 with the official CoQA evaluation script's normalisation.

A metric whose package or resource is missing is left out with one warning naming the fix, so an
evaluation never fails for want of an optional metric. All scores are percentages except the
correlations, MSE, NIST and CIDEr.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import re
import shutil
import string
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)
LOWER_IS_BETTER = {"ter", "mse", "loss", "perplexity"}
GENERATION_METRICS = (
    "bleu",
    "chrf",
    "ter",
    "nist",
    "meteor",
    "rouge1",
    "rouge2",
    "rougeL",
    "cider",
    "em",
    "f1",
)
_warned: set[str] = set()


def _skip(metric: str, why: str) -> None:
    if metric not in _warned:
        _warned.add(metric)
        logger.warning("metric %s skipped: %s", metric, why)


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> dict:
    """Accuracy and F1 (class 1 for two classes, macro-averaged otherwise), in percent."""
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if len(gold) == 0:
        raise ValueError("no examples to score")
    f1s = []
    for cls in range(num_labels):
        tp = np.sum((pred == cls) & (gold == cls))
        denom = np.sum(pred == cls) + np.sum(gold == cls)
        f1s.append(2 * tp / denom if denom else 0.0)
    f1 = f1s[1] if num_labels == 2 else float(np.mean(f1s))
    return {"accuracy": 100.0 * float(np.mean(pred == gold)), "f1": 100.0 * float(f1)}


def regression_metrics(predictions: Sequence[float], labels: Sequence[float]) -> dict:
    """Pearson and Spearman correlation (x100, GLUE's convention) and mean squared error."""
    import pandas as pd

    pred, gold = pd.Series(np.asarray(predictions, dtype=float)), pd.Series(np.asarray(labels, dtype=float))
    # Spearman = Pearson of the ranks (pandas' own "spearman" needs scipy, which nothing else needs).
    pearson, spearman = pred.corr(gold), pred.rank().corr(gold.rank())
    return {
        "pearson": 100.0 * float(np.nan_to_num(pearson)),
        "spearman": 100.0 * float(np.nan_to_num(spearman)),
        "mse": float(np.mean((pred - gold) ** 2)),
    }


def _pad_references(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants reference *streams*; inputs with fewer references pad with None."""
    width = max(len(r) for r in references)
    return [[r[i] if i < len(r) else None for r in references] for i in range(width)]


def _rouge(predictions, references, names: list[str]) -> dict:
    from rouge_score import rouge_scorer

    keys = ["rougeLsum" if n == "rougeL" else n for n in names]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    totals = collections.defaultdict(float)
    for pred, refs in zip(predictions, references, strict=True):
        # rougeLsum splits summaries into sentences on newlines, as the CNN/DM convention expects.
        pred_l = "\n".join(_sentences(pred))
        scores = scorer.score_multi(["\n".join(_sentences(r)) for r in refs], pred_l)
        for name, key in zip(names, keys, strict=True):
            totals[name] += scores[key].fmeasure
    return {name: 100.0 * totals[name] / len(predictions) for name in names}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s] or [""]


def _nist(predictions, references) -> float:
    from nltk.translate.nist_score import corpus_nist

    hyps = [p.split() for p in predictions]
    refs = [[r.split() for r in rs] for rs in references]
    # NIST is undefined for empty hypotheses; they score as a single unknown token.
    hyps = [h or ["<empty>"] for h in hyps]
    try:
        return float(corpus_nist(refs, hyps, n=4))
    except ZeroDivisionError:  # NLTK divides by the hypotheses' n-gram count: none of some order -> no score
        return 0.0


def _wordnet_ready() -> bool:
    """Whether NLTK can load WordNet (METEOR's synonym matching), which it cannot download offline."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError:
        return False
    return True


_METEOR = []  # one METEOR 1.5 java process per Python process: starting it costs seconds


def _meteor_line(text: str) -> str:
    # METEOR's java process reads one line per segment, fields split by "|||": keep both out of texts.
    return " ".join(text.replace("|||", " ").split()) or "-"


def _meteor(predictions, references) -> float | None:
    if shutil.which("java") and importlib.util.find_spec("pycocoevalcap") is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        if not _METEOR:
            _METEOR.append(Meteor())
        scorer = _METEOR[0]
        try:
            score, _ = scorer.compute_score(
                {i: [_meteor_line(r) for r in refs] for i, refs in enumerate(references)},
                {i: [_meteor_line(p)] for i, p in enumerate(predictions)},
            )
        except (ValueError, OSError) as err:
            # pycocoevalcap keeps its lock and a desynchronised process after an error, and its
            # destructor would then wait forever: stop the process and free the lock ourselves.
            _METEOR.clear()
            scorer.meteor_p.kill()
            if scorer.lock.locked():
                scorer.lock.release()
            _skip("meteor", f"the METEOR 1.5 java process failed ({err})")
            return None
        return 100.0 * float(score)
    if not _wordnet_ready():
        _skip(
            "meteor",
            "METEOR needs java (pycocoevalcap's METEOR 1.5) or NLTK's WordNet data "
            "(python -m nltk.downloader wordnet)",
        )
        return None
    from nltk.translate.meteor_score import meteor_score

    scores = [
        meteor_score([r.split() for r in refs], pred.split())
        for pred, refs in zip(predictions, references, strict=True)
    ]
    return 100.0 * float(np.mean(scores))


def _cider(predictions, references) -> float:
    from pycocoevalcap.cider.cider import Cider

    # CIDEr on lower-cased text with punctuation split off (what the COCO PTB tokenizer does, without java).
    def tok(text: str) -> str:
        return " ".join(re.findall(r"\w+|[^\w\s]", text.lower())) or "-"

    score, _ = Cider().compute_score(
        {i: [tok(r) for r in refs] for i, refs in enumerate(references)},
        {i: [tok(p)] for i, p in enumerate(predictions)},
    )
    return float(score)


def _normalize_answer(text: str) -> str:
    """The official CoQA evaluation script's answer normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _coqa(predictions, references) -> dict:
    """Exact match and token F1, each the best over an example's references (official CoQA scoring)."""
    em_total = f1_total = 0.0
    for pred, refs in zip(predictions, references, strict=True):
        p_tokens = _normalize_answer(pred).split()
        best_em = best_f1 = 0.0
        for ref in refs:
            r_tokens = _normalize_answer(ref).split()
            best_em = max(best_em, float(p_tokens == r_tokens))
            common = collections.Counter(p_tokens) & collections.Counter(r_tokens)
            same = sum(common.values())
            if not p_tokens or not r_tokens:
                f1 = float(p_tokens == r_tokens)
            elif same == 0:
                f1 = 0.0
            else:
                precision, recall = same / len(p_tokens), same / len(r_tokens)
                f1 = 2 * precision * recall / (precision + recall)
            best_f1 = max(best_f1, f1)
        em_total += best_em
        f1_total += best_f1
    return {"em": 100.0 * em_total / len(predictions), "f1": 100.0 * f1_total / len(predictions)}


def generation_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], names: Sequence[str]
) -> dict:
    """The metrics ``names`` of generated texts against one or more references each.

    Metrics whose package or resource is unavailable are left out (with one warning).
    """
    unknown = set(names) - set(GENERATION_METRICS)
    if unknown:
        raise ConfigError(f"unknown generation metrics {sorted(unknown)}; known: {GENERATION_METRICS}")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    predictions = [p.strip() for p in predictions]
    out: dict[str, float] = {}
    if {"bleu", "chrf", "ter"} & set(names):
        import sacrebleu

        streams = _pad_references(references)
        if "bleu" in names:
            out["bleu"] = float(sacrebleu.corpus_bleu(predictions, streams).score)
        if "chrf" in names:
            out["chrf"] = float(sacrebleu.corpus_chrf(predictions, streams).score)
        if "ter" in names:
            out["ter"] = float(sacrebleu.corpus_ter(predictions, streams).score)
    rouge = [n for n in ("rouge1", "rouge2", "rougeL") if n in names]
    if rouge:
        if importlib.util.find_spec("rouge_score") is None:
            _skip("rouge", "pip install rouge-score")
        else:
            out.update(_rouge(predictions, references, rouge))
    if "nist" in names:
        if importlib.util.find_spec("nltk") is None:
            _skip("nist", "pip install nltk")
        else:
            out["nist"] = _nist(predictions, references)
    if "meteor" in names:
        if importlib.util.find_spec("pycocoevalcap") is None and importlib.util.find_spec("nltk") is None:
            _skip("meteor", "pip install pycocoevalcap (with java) or nltk (with WordNet)")
        else:
            value = _meteor(predictions, references)
            if value is not None:
                out["meteor"] = value
    if "cider" in names:
        if importlib.util.find_spec("pycocoevalcap") is None:
            _skip("cider", "pip install pycocoevalcap")
        else:
            out["cider"] = _cider(predictions, references)
    if {"em", "f1"} & set(names):
        out.update({k: v for k, v in _coqa(predictions, references).items() if k in names})
    return out


def better(metric: str, a: float, b: float | None) -> bool:
    """Whether score ``a`` beats ``b`` on ``metric`` (None always loses)."""
    if b is None:
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b
