"""Typed run records: what runs write to disk and what comparisons show, each with one reader
(``from_json``, which also reads what earlier versions wrote) and one writer (``to_json``).

- :class:`RunRecord`: ``inducer_run.json`` next to each saved adapter, and a run folder's
  ``config.json`` (what ``eval`` / ``generate`` / ``--resume`` need to reuse a run).
- :class:`RunResult`: a run's ``results.json`` (what ``train_run`` / ``run_one`` return).
- :class:`ResultRow`: one method's row of a comparison (mean ± std over seeds).
- :class:`CompareResults`: ``compare``'s ``results.json``.

Every record carries ``version``: the format it was read from (files without one were written
before records were versioned: version 0, whose ``knobs`` is today's ``sizes``); ``to_json`` always
writes today's form, :data:`RECORD_VERSION`. The one renderer of
result rows is :func:`table_cells` (the CLI's table and ``results.md`` alike). This module imports
no deep-learning library.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.task_source import TaskSource
from ..errors import RunFolderError
from ..io.bounded_files import read_json
from .config import TrainConfig

RECORD_VERSION = 1
RUN_FILE = "inducer_run.json"  # written next to each saved adapter: what eval/generate need to reuse it
# Tokens generated when neither the run's options nor its task said how many (records before the
# task's default was recorded).
DEFAULT_NEW_TOKENS = 40


def _sizes(data: dict) -> dict:
    """A record's sizes: ``sizes``, or ``knobs`` as version-0 records named them."""
    return dict(data.get("sizes", data.get("knobs")) or {})


def _known(cls, data: dict) -> dict:
    """The entries of ``data`` that are fields of ``cls`` (unknown ones, from a newer version, are
    left out rather than refused: reading never fails for an added entry)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class RunRecord:
    """How a run was made: base model, task, method and sizes, encoding and training options.

    Attributes:
        model: the base model as given (hub id, folder or shortcut).
        source: where the task's data came from (``"task"`` on disk).
        kind: classification / regression / generation.
        method: the method's name.
        label_names: the class names of a classification task (None: numbers).
        budget: the budget the sizes were searched for (None: paper's or explicit sizes).
        sizes: the sizes chosen.
        summary: one line saying what was chosen.
        encode: the encoding options fitted to the model (``EncodeOptions`` fields).
        max_new_tokens: the task's default generation length.
        train: the training options (``TrainConfig`` fields, as saved).
        base_weights_sha256: the base's weights (:func:`inducer.io.base_identity.base_weights_sha256`).
        schedule_changes: the schedules a resumed run switched to (``config.json`` only).
        step, validation: the step and validation metrics of a saved adapter (``inducer_run.json`` only).
        version: the format's version it was read from (written: :data:`RECORD_VERSION`).
    """

    model: str
    source: TaskSource
    kind: str
    method: str
    label_names: list[str] | None = None
    budget: str | int | None = None
    sizes: dict = field(default_factory=dict)
    summary: str = ""
    encode: dict = field(default_factory=dict)
    max_new_tokens: int | None = None
    train: dict = field(default_factory=dict)
    base_weights_sha256: str | None = None
    schedule_changes: list[dict] = field(default_factory=list)
    step: int | None = None
    validation: dict | None = None
    version: int = RECORD_VERSION

    def to_json(self) -> dict:
        """The JSON form (``"task"`` for the source; entries a run folder or adapter lacks left out)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["task"] = data.pop("source").to_dict()
        for optional in ("schedule_changes", "step", "validation"):
            if not data[optional] and data[optional] != 0:
                del data[optional]
        del data["version"]
        return {"version": RECORD_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """A record from its JSON form, of this or an earlier version."""
        known = _known(cls, {**data, "sizes": _sizes(data), "version": data.get("version", 0)})
        known["source"] = TaskSource.from_dict(data["task"]) if data.get("task") else TaskSource("")
        known.setdefault("model", "")
        known.setdefault("kind", "")
        known.setdefault("method", "")
        known["train"] = dict(known.get("train") or {})
        known["schedule_changes"] = list(known.get("schedule_changes") or [])
        return cls(**known)

    @classmethod
    def read(cls, folder: str | Path, name: str = RUN_FILE) -> RunRecord | None:
        """The record saved in ``folder`` (``inducer_run.json``; ``config.json`` for a run folder),
        None if there is none."""
        path = Path(folder) / name
        return cls.from_json(_read_object(path)) if path.is_file() else None

    def config(self, overrides: dict | None = None) -> TrainConfig:
        """The saved training options (defaults where none were; options a newer version added are
        ignored), then ``overrides`` (None values: not given)."""
        known = {k: v for k, v in self.train.items() if k in TrainConfig.field_names()}
        return TrainConfig(**{**known, **{k: v for k, v in (overrides or {}).items() if v is not None}})

    def new_tokens(self, given: int | None = None) -> int:
        """How many tokens to generate: ``given``, else the run's option, else its task's default."""
        return given or self.train.get("max_new_tokens") or self.max_new_tokens or DEFAULT_NEW_TOKENS

    def num_labels(self) -> int | None:
        """The task head's outputs: one per class name, 1 for regression, None when unknown."""
        if self.label_names:
            return len(self.label_names)
        return 1 if self.kind == "regression" else None


@dataclass
class RunResult:
    """What one training run achieved (its ``results.json``).

    ``parameters`` are those the method keeps at inference (what budgets match; prefix-tuning's
    training-only MLP excluded), ``trainable_parameters`` what training updates (that MLP and the task
    head included), ``percent_of_base`` the first as a percentage of ``base_parameters``
    (:func:`inducer.sizing.budget.percent_of_base`). ``test``: split -> metric -> value, on the best adapter;
    ``history``: the validation records.
    """

    method: str
    summary: str
    sizes: dict
    parameters: int
    trainable_parameters: int
    head_parameters: int
    base_parameters: int
    percent_of_base: float
    select_metric: str
    best_validation: float | None
    best_step: int
    steps: int
    stopped_early: bool
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    version: int = RECORD_VERSION

    def to_json(self) -> dict:
        """The JSON form."""
        data = dataclasses.asdict(self)
        del data["version"]
        return {"version": RECORD_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> RunResult:
        """A result from its JSON form, of this or an earlier version."""
        return cls(**_known(cls, {**data, "sizes": _sizes(data), "version": data.get("version", 0)}))

    def score(self, split: str, metric: str) -> float | None:
        """The test ``metric`` on ``split`` (None if not measured)."""
        return self.test.get(split, {}).get(metric)

    def headline(self) -> str:
        """One line: the best validation score, where it was reached, and the training time."""
        return (
            f"best validation {self.select_metric} {self.best_validation:.4f} at step {self.best_step} "
            f"of {self.steps}; {self.train_seconds:.0f} s training"
        )


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class ResultRow:
    """One method of a comparison: its counts and sizes (first seed's run) and its test ``metric``
    as mean ± std over the seeds' runs (``other_splits``: split -> ``{"mean", "std"}``)."""

    method: str
    lr: float
    parameters: int
    percent_of_base: float
    trainable_parameters: int
    sizes: dict
    metric: str
    mean: float | None
    std: float | None
    other_splits: dict[str, dict[str, float | None]]
    train_seconds: float
    seeds: int

    @classmethod
    def from_runs(cls, method: str, runs: list[RunResult], lr: float, metric: str) -> ResultRow:
        """The row of ``method``'s ``runs`` (one per seed) at learning rate ``lr``."""
        first = runs[0]
        mean, std = _mean_std([s for r in runs if (s := r.score("test", metric)) is not None])
        others = {}
        for split in first.test:
            if split != "test" and first.score(split, metric) is not None:
                m, s = _mean_std([r.score(split, metric) for r in runs])
                others[split] = {"mean": m, "std": s}
        return cls(
            method, lr, first.parameters, first.percent_of_base, first.trainable_parameters,
            dict(first.sizes), metric, mean, std, others,
            statistics.fmean(r.train_seconds for r in runs), len(runs),
        )  # fmt: skip

    def to_json(self) -> dict:
        """The JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ResultRow:
        """A row from its JSON form."""
        return cls(**_known(cls, {**data, "sizes": _sizes(data)}))

    def score_text(self) -> str:
        """Mean ± std over seeds (just the value for one seed; ``n/a`` when not measured)."""
        if self.mean is None:
            return "n/a"
        return f"{self.mean:.2f}" if self.seeds == 1 else f"{self.mean:.2f} ± {self.std:.2f}"


def table_cells(rows: list[ResultRow]) -> tuple[list[str], list[list[str]]]:
    """The comparison table of ``rows``: its column names and each row's cells (the one renderer of
    result rows, shown by the CLI and written to ``results.md``)."""
    metric = rows[0].metric if rows else "metric"
    others = sorted({k for r in rows for k in r.other_splits})
    head = ["method", "parameters", "% of base", f"test {metric}", *[f"{o} {metric}" for o in others],
            "lr", "train time"]  # fmt: skip
    cells = []
    for r in rows:
        split_cells = [
            f"{r.other_splits[o]['mean']:.2f} ± {r.other_splits[o]['std']:.2f}" if o in r.other_splits else ""
            for o in others
        ]
        cells.append([r.method, f"{r.parameters:,}", f"{r.percent_of_base:.3f}%", r.score_text(),
                      *split_cells, f"{r.lr:g}", f"{r.train_seconds:.0f} s"])  # fmt: skip
    return head, cells


def markdown_table(rows: list[ResultRow], title: str = "") -> str:
    """The comparison table in Markdown (empty without rows)."""
    if not rows:
        return ""
    head, cells = table_cells(rows)
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


@dataclass
class CompareResults:
    """A comparison: what was compared and its rows, learning-rate trials (method -> rows with
    ``lr``, ``validation``, ``select_metric``) and every run (method -> one per seed)."""

    model: str
    source: TaskSource
    budget: str | int | None
    seeds: list[int]
    rows: list[ResultRow] = field(default_factory=list)
    lr_trials: dict[str, list[dict]] = field(default_factory=dict)
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    environment: dict[str, Any] | None = None  # when, where and how long a demo ran
    version: int = RECORD_VERSION

    def to_json(self) -> dict:
        """The JSON form (``"task"`` for the source)."""
        data: dict[str, Any] = {
            "version": RECORD_VERSION, "model": self.model, "task": self.source.to_dict(),
            "budget": self.budget, "seeds": self.seeds, "rows": [r.to_json() for r in self.rows],
            "lr_trials": self.lr_trials,
            "runs": {m: [r.to_json() for r in runs] for m, runs in self.runs.items()},
        }  # fmt: skip
        if self.environment is not None:
            data["environment"] = self.environment
        return data

    @classmethod
    def from_json(cls, data: dict) -> CompareResults:
        """Results from their JSON form, of this or an earlier version."""
        return cls(
            model=data["model"],
            source=TaskSource.from_dict(data["task"]),
            budget=data.get("budget"),
            seeds=list(data.get("seeds") or []),
            rows=[ResultRow.from_json(r) for r in data.get("rows", [])],
            lr_trials=dict(data.get("lr_trials") or {}),
            runs={m: [RunResult.from_json(r) for r in runs] for m, runs in (data.get("runs") or {}).items()},
            environment=data.get("environment"),
            version=data.get("version", 0),
        )

    @classmethod
    def read(cls, path: str | Path) -> CompareResults:
        """The results in ``path`` (a ``results.json``, or the folder holding it)."""
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        return cls.from_json(_read_object(path))


def _read_object(path: Path) -> dict:
    """A run file's JSON object, read within the size and depth limits of a user's file."""
    try:
        data = read_json(path, 1 << 20)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}); re-save the run or remove the file") from err
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is not a JSON object; re-save the run or remove the file")
    return data

