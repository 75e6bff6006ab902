"""Tasks from the user's own csv / tsv / json / jsonl files.

``--task classification --train-file train.csv --validation-file dev.csv --test-file test.csv``
with column options. Classification labels may be class ids (0..K-1) or strings (mapped to ids
in sorted order of the train split's values); regression labels are numbers; generation reads a
source and a target column (rows with the same source are several references of one input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .base import KINDS, TaskData, TaskError, TaskKind, TaskSpec, check_split, holdout_split, read_file

logger = logging.getLogger(__name__)
SELECT = {"classification": "accuracy", "regression": "pearson", "generation": "bleu"}
METRICS = {
    "classification": ("accuracy", "f1"),
    "regression": ("pearson", "spearman", "mse"),
    "generation": ("bleu", "chrf", "rougeL"),
}


@dataclass(frozen=True)
class Columns:
    """Which columns of the user's files hold what."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    source: str = "source"
    target: str = "target"


def _require_columns(dataset, needed: list[str], path: str) -> None:
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        options = {
            "text": "--text-column",
            "label": "--label-column",
            "source": "--source-column",
            "target": "--target-column",
        }
        raise TaskError(
            f"{path}: missing column(s) {missing}; the file has {dataset.column_names}. Name the "
            f"right ones with {', '.join(options.values())} or --text-pair-column"
        )


def load_files(
    kind: str,
    train_file: str | None,
    validation_file: str | None = None,
    test_file: str | None = None,
    columns: Columns = Columns(),
    holdout: int = 0,
) -> TaskData:
    """Load a task of ``kind`` from local files.

    Without a validation file, ``holdout`` rows (default: 10% of train, at most 1,000) are held out
    of train by a fixed-seed shuffle; without a test file, the validation split is also the test split.
    """
    if kind not in KINDS:
        raise TaskError(
            f"--task must be a built-in task name or one of {KINDS} for local files, got {kind!r}"
        )
    if not train_file:
        raise TaskError(f"--task {kind} reads your files: give at least --train-file")
    kind_t: TaskKind = kind  # type: ignore[assignment]
    paths = {"train": train_file, "validation": validation_file, "test": test_file}
    raw = {split: read_file(path) for split, path in paths.items() if path}
    needed = (
        [columns.text] + ([columns.text_pair] if columns.text_pair else []) + [columns.label]
        if kind != "generation"
        else [columns.source, columns.target]
    )
    for split, dataset in raw.items():
        _require_columns(dataset, needed, paths[split])

    label_names = None
    if kind == "classification":
        values = [v for v in raw["train"][columns.label] if v is not None and v != ""]
        if all(isinstance(v, str) for v in values):
            label_names = tuple(sorted(set(values)))
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            label_names = tuple(str(i) for i in range(max(values) + 1)) if values else None
        else:
            raise TaskError(
                f"{train_file}: column {columns.label!r} must hold class ids (ints) or names "
                "(strings), not a mix or floats; for numbers use --task regression"
            )

    def text_of(row: dict, column: str) -> str:
        value = row[column]
        if value is None or (isinstance(value, str) and not value.strip()):
            # str(None) would train on the literal text "None"
            raise TaskError(f"the {column!r} cell is empty; fill it in or remove the row")
        return str(value)

    def preprocess(row: dict) -> list[dict]:
        # Rows without a label / target are dropped (counted and reported below), never guessed.
        if kind == "generation":
            if row[columns.target] is None:
                return []
            return [{"source": text_of(row, columns.source), "targets": [text_of(row, columns.target)]}]
        label = row[columns.label]
        if label is None or (isinstance(label, str) and not label.strip()):
            return []
        if kind == "classification" and isinstance(label, str):
            if label not in label_names:
                raise TaskError(
                    f"label {label!r} does not occur in the train file ({list(label_names)}); every "
                    "class must appear in training data"
                )
            label = label_names.index(label)
        elif kind == "regression":
            try:
                label = float(label)
            except (TypeError, ValueError) as err:
                raise TaskError(f"regression label {label!r} is not a number") from err
        pair = text_of(row, columns.text_pair) if columns.text_pair else None
        return [{"text": text_of(row, columns.text), "text_pair": pair, "label": label}]

    spec = TaskSpec(
        name=f"{kind} (local files)",
        kind=kind_t,
        description="user files",
        preprocess=preprocess,
        label_names=label_names,
        metrics=METRICS[kind],
        select=SELECT[kind],
    )
    from .base import normalise

    splits = {split: normalise(dataset, spec, split, paths[split]) for split, dataset in raw.items()}
    for split, dataset in splits.items():
        dropped = len(raw[split]) - len(dataset)
        if dropped:
            empty = columns.target if kind == "generation" else columns.label
            logger.warning("%s: dropped %d of %d rows with an empty %r cell", paths[split], dropped,
                           len(raw[split]), empty)
    if "validation" not in splits:
        size = holdout or min(1000, max(1, len(splits["train"]) // 10))
        splits["train"], splits["validation"] = holdout_split(splits["train"], size)
        logger.info("no --validation-file: held out %d train rows for validation", size)
    if "test" not in splits:
        splits["test"] = splits["validation"]
        logger.info("no --test-file: reporting on the validation split")
    num_labels = len(label_names) if label_names else (1 if kind == "regression" else None)
    for split, dataset in splits.items():
        check_split(dataset, spec.name, split, kind_t, num_labels)
    return TaskData(spec=spec, splits=splits, label_names=label_names)
