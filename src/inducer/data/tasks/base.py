"""Task specifications, the registry of built-in tasks, and loading a task's splits.

A task turns raw rows (a hub dataset, local files, or built-in offline data) into normalised rows:

* classification / regression: ``text``, ``text_pair`` (None for single sentences), ``label``
  (an int class id, or a float for regression);
* generation: ``source`` and ``targets`` (one or more reference texts; training uses each as a
  target, evaluation scores against all of them).

Every task has the splits ``train``, ``validation`` (model selection, early stopping, learning-rate
picking) and ``test`` (reported); some add more (MNLI's ``test_mismatched``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ...errors import TaskError  # noqa: F401 (defined in the error taxonomy, raised here)

logger = logging.getLogger(__name__)

# The one definition of the task kinds (a model's head, a data file's columns, ``--task`` for files).
TaskKind = Literal["classification", "regression", "generation"]
KINDS: tuple[str, ...] = get_args(TaskKind)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class TaskSpec:
    """How to get and read one task.

    Attributes:
        name: the ``--task`` name.
        kind: classification, regression or generation.
        description: one line for ``inducer info`` and the README.
        preprocess: raw row -> list of normalised rows (a raw row may give several: CoQA turns).
        hub: ``(dataset id, config name or None)`` for ``datasets.load_dataset``; None for offline data.
        splits: our split name -> the source's split name.
        holdout: when > 0, ``validation`` is this many rows held out of ``train`` (fixed seed 0),
            for sources whose labelled validation split is used as our test split.
        loader: builds the raw splits (a ``DatasetDict``) without the hub, for built-in offline data.
        label_names: class names, index = label id (classification).
        metrics: the metrics reported, see :mod:`inducer.data.metrics`.
        select: the metric that model selection and comparisons rank by (higher is better).
        separator: appended to a source to form a decoder-only model's prompt.
        truncate_source: ``"right"`` keeps the start of long sources (articles); ``"left"`` keeps
            the end (CoQA, whose question is last).
        max_new_tokens: default generation length.
    """

    name: str
    kind: TaskKind
    description: str
    preprocess: Callable[[dict], list[dict]]
    hub: tuple[str, str | None] | None = None
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    holdout: int = 0
    loader: Callable[[], object] | None = None
    label_names: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    select: str = "accuracy"
    separator: str = " =>"
    truncate_source: str = "right"
    max_new_tokens: int = 40

    @property
    def num_labels(self) -> int | None:
        """Number of classes (1 for regression, None for generation)."""
        if self.kind == "regression":
            return 1
        return len(self.label_names) if self.label_names else None


@dataclass
class TaskData:
    """A task's normalised splits (``datasets.Dataset`` each) and its label facts."""

    spec: TaskSpec
    splits: dict
    label_names: tuple[str, ...] | None = None

    @property
    def kind(self) -> TaskKind:
        return self.spec.kind

    @property
    def num_labels(self) -> int | None:
        """Number of classes (1 for regression, None for generation)."""
        if self.kind == "regression":
            return 1
        return len(self.label_names) if self.label_names else None

    def split(self, name: str):
        """The split ``name``, or a :class:`TaskError` naming those available."""
        if name not in self.splits:
            raise TaskError(
                f"task {self.spec.name!r} has no split {name!r}; available: {sorted(self.splits)}"
            )
        return self.splits[name]


def _flatten(preprocess: Callable[[dict], list[dict]], columns: list[str], source: str):
    """A batched ``Dataset.map`` function applying a row -> rows ``preprocess`` (may drop or split rows).

    A :class:`TaskError` raised for one row is re-raised naming ``source`` and the row's number."""

    def apply(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = defaultdict(list)
        for index, values in zip(indices, zip(*(batch[c] for c in columns), strict=True), strict=True):
            row = dict(zip(columns, values, strict=True))
            try:
                items = preprocess(row)
            except KeyError as err:
                raise TaskError(f"{source}: row {index + 1} lacks the column {err.args[0]!r}; "
                                f"its columns are {columns}") from err
            except TaskError as err:
                raise TaskError(f"{source}: row {index + 1}: {err}") from None
            for item in items:
                for key, value in item.items():
                    out[key].append(value)
        return dict(out)

    return apply


def normalise(raw, spec: TaskSpec, split_name: str, source: str | None = None):
    """Apply ``spec.preprocess`` to the raw ``datasets.Dataset`` of one split (``source``: its file,
    named in errors)."""
    import datasets

    columns = list(raw.column_names)
    dataset = raw.map(
        _flatten(spec.preprocess, columns, source or f"{spec.name} {split_name} split"),
        batched=True,
        with_indices=True,
        remove_columns=columns,
        desc=f"{spec.name}/{split_name}",
        load_from_cache_file=False,
    )
    # Class ids made from string labels would otherwise keep a raw "label" column's string type.
    if spec.kind == "classification" and "label" in dataset.column_names:
        if dataset.features["label"] in (datasets.Value("string"), datasets.Value("large_string")):
            dataset = dataset.cast_column("label", datasets.Value("int64"))
    return dataset


def check_split(dataset, task: str, split: str, kind: TaskKind, num_labels: int | None) -> None:
    """Refuse an empty split or labels outside ``0..num_labels-1``, naming the problem and the fix."""
    if len(dataset) == 0:
        raise TaskError(
            f"task {task!r}: the {split} split is empty after preprocessing; check the data file "
            "and the column options (--text-column, --label-column, ...)"
        )
    if kind == "classification" and num_labels:
        labels = dataset["label"]
        bad = sorted(
            {lab for lab in labels if not isinstance(lab, int) or not 0 <= lab < num_labels}, key=str
        )
        if bad:
            raise TaskError(
                f"task {task!r}: {split} labels {bad[:5]} are outside 0..{num_labels - 1}; "
                f"labels must be class ids below num_labels={num_labels} (or strings)"
            )


def local_data_files(directory: str | Path, split: str) -> Path:
    """The file for ``split`` in a folder holding a task's data (``<split>.jsonl`` or .json/.csv/.tsv)."""
    directory = Path(directory)
    for suffix in DATA_SUFFIXES:
        path = directory / f"{split}{suffix}"
        if path.is_file():
            return path
    raise TaskError(f"{directory} has no {split} file ({', '.join(split + s for s in DATA_SUFFIXES)})")


def _check_text(path: Path, data: bytes) -> None:
    """Refuse bytes that are not UTF-8, malformed JSON lines, and duplicate CSV/TSV columns or JSON keys,
    naming the file and line (datasets' own errors name neither)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: bytes that are not UTF-8 ({err.reason}); "
                        "save the file as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        header = next(csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","), [])
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise TaskError(f"{path}:1: duplicate column name(s) {duplicates}; "
                            "give every column its own name")
        return

    def unique_keys(pairs: list) -> dict:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise TaskError(f"duplicate key(s) {duplicates}")
        return dict(pairs)

    try:  # one JSON document (a list of rows) ...
        json.loads(text, object_pairs_hook=unique_keys)
        return
    except ValueError as err:
        if suffix == ".json" and not str(err).startswith("Extra data") and "duplicate" in str(err):
            raise TaskError(f"{path}: {err}; give every field its own name") from None
    for number, line in enumerate(text.splitlines(), 1):  # ... or one row per line
        if line.strip():
            try:
                row = json.loads(line, object_pairs_hook=unique_keys)
            except ValueError as err:
                raise TaskError(f"{path}:{number}: not a valid JSON row ({err}); "
                                "fix or remove the line") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")


def read_file(path: str | Path):
    """A local csv / tsv / json / jsonl file as a ``datasets.Dataset``."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise TaskError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".tsv"):
        raise TaskError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
    empty = TaskError(f"data file {str(path)!r} has no rows: give a file with data (or leave the split out)")
    data = path.read_bytes()
    if not data.strip():  # datasets fails on an empty file with an unrelated message
        raise empty
    _check_text(path, data)
    try:
        if suffix in (".json", ".jsonl"):
            loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
            loaded = datasets.load_dataset("csv", data_files=str(path), split="train", **extra)
    except ValueError as error:
        if "corresponds to no data" in str(error):  # a csv with a header and no rows
            raise empty from None
        raise TaskError(f"{path}: cannot be read as {suffix[1:]} ({error})") from None
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise TaskError(f"{path}: cannot be read as {suffix[1:]} ({cause}); "
                        "check the file's format") from None
    if len(loaded) == 0:
        raise empty
    return loaded


def holdout_split(dataset, size: int, seed: int = 0):
    """Split ``dataset`` into (rest, held-out ``size`` rows), by a fixed-seed shuffle."""
    if size >= len(dataset):
        raise TaskError(f"cannot hold out {size} validation rows from a train split of {len(dataset)}")
    parts = dataset.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def load_spec(spec: TaskSpec, data_dir: str | Path | None = None) -> TaskData:
    """Load the data of task ``spec``: from ``data_dir`` when given (files named after the source's
    splits, in the hub dataset's own format, e.g. the test fixtures), else offline data or the hub."""
    import datasets

    name = spec.name
    wanted = dict(spec.splits)
    if data_dir is not None:
        raw = {source: read_file(local_data_files(data_dir, source)) for source in set(wanted.values())}
    elif spec.loader is not None:
        raw = spec.loader()
    else:
        dataset_id, config = spec.hub
        try:
            raw = datasets.load_dataset(dataset_id, config)
        except Exception as err:  # noqa: BLE001  (hub/network errors come in many types)
            raise TaskError(
                f"cannot load {dataset_id!r}{f' ({config})' if config else ''} for task {name!r}: "
                f"{err}\nWithout the hub, pass --data-dir with local files in the same format "
                "(train.jsonl, validation.jsonl, ...)."
            ) from err
    splits = {}
    for ours, source in wanted.items():
        if source not in raw:
            raise TaskError(f"task {name!r}: the data has no {source!r} split (it has {sorted(raw)})")
        splits[ours] = normalise(raw[source], spec, ours)
    if spec.holdout:
        size = min(spec.holdout, max(1, len(splits["train"]) // 10))
        splits["train"], splits["validation"] = holdout_split(splits["train"], size)
    for split, dataset in splits.items():
        check_split(dataset, name, split, spec.kind, spec.num_labels)
    return TaskData(spec=spec, splits=splits, label_names=spec.label_names)


def group_references(dataset) -> tuple[list[str], list[list[str]]]:
    """Unique sources of a generation split (in first-seen order) and all their references."""
    refs: dict[str, list[str]] = {}
    for source, targets in zip(dataset["source"], dataset["targets"], strict=True):
        bucket = refs.setdefault(source, [])
        bucket.extend(t for t in targets if t not in bucket)
    return list(refs), list(refs.values())
