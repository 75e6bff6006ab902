"""The built-in tasks: the paper's experiments (with their hub dataset ids and preprocessing) and
offline data (``vader-movies``, ``vader-movies-rating``, ``e2e-synthetic``).

Hub ids are the datasets' current homes on the Hugging Face hub. GLUE's test labels are hidden, so
for SST-2 and MNLI the GLUE validation sets are our test splits (the paper reports dev accuracy) and
our validation split is held out of train (fixed seed), so model selection never sees test data.
"""

from __future__ import annotations

from . import e2e_synthetic, vader
from .base import TaskSpec

# The built-in tasks by name, in the order they are declared below (read by inducer.data.tasks.registry).
BUILTIN_TASKS: dict[str, TaskSpec] = {}


def _builtin(spec: TaskSpec) -> TaskSpec:
    BUILTIN_TASKS[spec.name] = spec
    return spec


DATA_TO_TEXT_METRICS = ("bleu", "nist", "meteor", "rougeL", "cider", "ter")
SUMMARY_METRICS = ("rouge1", "rouge2", "rougeL")


def _sst2(row: dict) -> list[dict]:
    return [{"text": row["sentence"], "text_pair": None, "label": row["label"]}]


def _mnli(row: dict) -> list[dict]:
    return [{"text": row["premise"], "text_pair": row["hypothesis"], "label": row["label"]}]


def _clean(entity: str) -> str:
    # DBpedia-style identifiers (Aarhus_Airport, "Denmark") read better as plain words.
    return entity.replace("_", " ").strip().strip('"')


def linearise_triples(triples: list[tuple[str, str, str]]) -> str:
    """Triples as one line, Li & Liang's format: ``subject : relation : object | ...``."""
    return " | ".join(f"{_clean(s)} : {_clean(r)} : {_clean(o)}" for s, r, o in triples)


def _webnlg(row: dict) -> list[dict]:
    # modified_triple_sets.mtriple_set: a list (one per set) of "subject | relation | object" strings.
    sets = row["modified_triple_sets"]["mtriple_set"]
    triples = [tuple(part.strip() for part in t.split("|")) for t in (sets[0] if sets else [])]
    texts = [t for t in row["lex"]["text"] if t]
    if not triples or not texts:
        return []
    return [{"source": linearise_triples(triples), "targets": texts}]


def _e2e(row: dict) -> list[dict]:
    # One row per (meaning representation, reference); rows sharing an MR are grouped at evaluation.
    return [{"source": row["meaning_representation"], "targets": [row["human_reference"]]}]


def _dart(row: dict) -> list[dict]:
    texts = [t for t in row["annotations"]["text"] if t]
    if not row["tripleset"] or not texts:
        return []
    return [{"source": linearise_triples([tuple(t) for t in row["tripleset"]]), "targets": texts}]


def _coqa(row: dict) -> list[dict]:
    # One example per turn: the story, the two previous turns, the question; target the free-form answer.
    answers = row["answers"]["input_text"]
    out, history = [], []
    for question, answer in zip(row["questions"], answers, strict=False):
        context = " ".join(history[-4:])
        out.append(
            {"source": f"{row['story']} {context} Q: {question}".replace("  ", " "), "targets": [answer]}
        )
        history += [f"Q: {question}", f"A: {answer}"]
    return out


def _summary(document: str, summary: str):
    def preprocess(row: dict) -> list[dict]:
        if not row[document] or not row[summary]:
            return []
        return [{"source": row[document], "targets": [row[summary]]}]

    return preprocess


GLUE_SPLITS = {"train": "train", "test": "validation"}

_builtin(
    TaskSpec(
        "sst2",
        "classification",
        "GLUE SST-2: movie-review sentence sentiment (2 classes)",
        _sst2,
        hub=("nyu-mll/glue", "sst2"),
        splits=GLUE_SPLITS,
        holdout=1000,
        label_names=("negative", "positive"),
        metrics=("accuracy", "f1"),
    )
)
_builtin(
    TaskSpec(
        "mnli",
        "classification",
        "GLUE MNLI: premise/hypothesis entailment (3 classes), matched + mismatched",
        _mnli,
        hub=("nyu-mll/glue", "mnli"),
        splits={"train": "train", "test": "validation_matched", "test_mismatched": "validation_mismatched"},
        holdout=2000,
        label_names=("entailment", "neutral", "contradiction"),
    )
)
_builtin(
    TaskSpec(
        "webnlg",
        "generation",
        "WebNLG 2017: DBpedia triples to text",
        _webnlg,
        hub=("webnlg-challenge/web_nlg", "webnlg_challenge_2017"),
        splits={"train": "train", "validation": "dev", "test": "test"},
        metrics=DATA_TO_TEXT_METRICS,
        select="bleu",
    )
)
_builtin(
    TaskSpec(
        "e2e",
        "generation",
        "E2E NLG: restaurant meaning representations to text",
        _e2e,
        hub=("tuetschek/e2e_nlg", None),
        metrics=DATA_TO_TEXT_METRICS,
        select="bleu",
    )
)
_builtin(
    TaskSpec(
        "dart",
        "generation",
        "DART: open-domain triples to text",
        _dart,
        hub=("Yale-LILY/dart", None),
        metrics=DATA_TO_TEXT_METRICS,
        select="bleu",
    )
)
_builtin(
    TaskSpec(
        "coqa",
        "generation",
        "CoQA: conversational question answering (free-form answers)",
        _coqa,
        hub=("stanfordnlp/coqa", None),
        splits={"train": "train", "test": "validation"},
        holdout=500,
        metrics=("em", "f1"),
        select="f1",
        separator=" A:",
        truncate_source="left",
        max_new_tokens=24,
    )
)
_builtin(
    TaskSpec(
        "cnn_dailymail",
        "generation",
        "CNN/DailyMail 3.0.0: news summarisation",
        _summary("article", "highlights"),
        hub=("abisee/cnn_dailymail", "3.0.0"),
        metrics=SUMMARY_METRICS,
        select="rouge2",
        separator=" TL;DR:",
        max_new_tokens=100,
    )
)
_builtin(
    TaskSpec(
        "xsum",
        "generation",
        "XSum: extreme (one-sentence) news summarisation",
        _summary("document", "summary"),
        hub=("EdinburghNLP/xsum", None),
        metrics=SUMMARY_METRICS,
        select="rouge2",
        separator=" TL;DR:",
        max_new_tokens=60,
    )
)

_builtin(
    TaskSpec(
        "vader-movies",
        "classification",
        "offline SST-2 stand-in: 10,568 Rotten Tomatoes sentences rated by humans (vaderSentiment sdist)",
        vader.binary,
        loader=vader.load_raw,
        label_names=("negative", "positive"),
        metrics=("accuracy", "f1"),
    )
)
_builtin(
    TaskSpec(
        "vader-movies-rating",
        "regression",
        "offline STS-B-style regression: the same sentences' mean human rating in [-4, 4]",
        vader.rating,
        loader=vader.load_raw,
        metrics=("pearson", "spearman", "mse"),
        select="pearson",
    )
)
_builtin(
    TaskSpec(
        "e2e-synthetic",
        "generation",
        "offline E2E-format data: generated meaning representations, several template references each",
        _e2e,
        loader=e2e_synthetic.load_raw,
        metrics=DATA_TO_TEXT_METRICS,
        select="bleu",
    )
)
