"""One experiment = base model x task x method (x budget): the glue between models, tasks, presets and
the training loop, shared by ``inducer train`` / ``eval`` / ``generate`` / ``compare`` / ``demo``.

Application entry points (with :mod:`inducer.runspec`, :mod:`inducer.compare`): :func:`train_run`
trains the one method of a ``RunSpec``; :func:`predict` runs a saved adapter on inputs;
:func:`evaluate_adapter` scores one on a task split.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .adapter import count_parameters
from .adapter_format import load_adapter
from .atomic import atomic_write_text
from .base_models import LoadedModel, load_model
from .encoding import EncodeOptions
from .presets import PRESETS, preset
from .run_folder import CONFIG_FILE, base_weights_sha256, folder_lock, prepare_run_folder
from .tasks import Columns, TaskData, TaskError, load_files, load_task
from .training import RUN_FILE, Trainer, TrainResult, encode_options, evaluate, set_seed
from .training_config import TrainConfig

if TYPE_CHECKING:
    from .runspec import RunSpec

logger = logging.getLogger(__name__)


@dataclass
class TaskSource:
    """Where a task's data comes from: a built-in name (optionally with a local ``data_dir`` in the
    hub format), or a kind (classification / regression / generation) with the user's files."""

    task: str
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    columns: Columns = field(default_factory=Columns)

    def load(self) -> TaskData:
        """The task's normalised splits."""
        if self.train_file or self.task in ("classification", "regression", "generation"):
            return load_files(self.task, self.train_file, self.validation_file, self.test_file, self.columns)
        if self.validation_file or self.test_file:
            raise TaskError(
                f"--validation-file/--test-file need --train-file; built-in task {self.task!r} "
                "brings its own splits (use --data-dir for local copies)"
            )
        return load_task(self.task, self.data_dir)

    def to_dict(self) -> dict:
        """JSON form, stored with adapters so eval can reload the same data (from any folder)."""
        data = {**asdict(self), "columns": asdict(self.columns)}
        for key in ("data_dir", "train_file", "validation_file", "test_file"):
            if data[key]:
                data[key] = str(Path(data[key]).resolve())
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskSource:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        return cls(**{**data, "columns": Columns(**data.get("columns", {}))})


def is_main_process() -> bool:
    """False in every process but the first under ``accelerate launch`` (which alone writes files)."""
    from accelerate import PartialState

    from .training import cpu_processes

    return PartialState(cpu=cpu_processes()).is_main_process


def check_method(method: str) -> None:
    """Refuse an unknown method name, listing the known ones."""
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(PRESETS)}")


def build(
    model_name: str,
    task: TaskData,
    method: str,
    budget: str | int | None = None,
    seed: int = 42,
    train_head: bool = True,
    sizes: dict | None = None,
    chosen: dict | None = None,
):
    """Load ``model_name`` with the head ``task`` needs and attach ``method`` at ``budget`` or with
    explicit ``sizes`` (both: an error).

    ``chosen`` (method -> its configs), shared by the runs of one comparison, keeps the configs of the
    first run of each method: later runs reuse them instead of searching the budget again (the search
    depends only on the base model's structure). Returns ``(loaded model, configs)``;
    ``configs.summary`` says which sizes were chosen.
    """
    import inducer

    check_method(method)
    set_seed(seed)  # a new task head's initialisation follows the seed
    loaded = load_model(model_name, task.kind, task.num_labels)
    if chosen is not None and method in chosen:
        configs = chosen[method]
    else:
        configs = preset(method, loaded.model, budget, sizes=sizes or None)
        if chosen is not None:
            chosen[method] = configs
    inducer.attach(loaded.model, list(configs), train_head=train_head)
    return loaded, configs


def run_info(
    model_name: str,
    source: TaskSource,
    task: TaskData,
    method: str,
    budget,
    configs,
    config: TrainConfig,
    loaded: LoadedModel,
) -> dict:
    """What ``eval`` / ``generate`` need to reuse a saved adapter: model, task, labels, lengths, method."""
    options = encode_options(task, loaded, config)
    return {
        "model": model_name,
        "task": source.to_dict(),
        "kind": task.kind,
        "label_names": list(task.label_names) if task.label_names else None,
        "method": method,
        "budget": budget,
        "knobs": {k: v for k, v in configs.knobs.items()},
        "summary": configs.summary,
        "encode": asdict(options),
        "max_new_tokens": task.spec.max_new_tokens,
        "train": asdict(config),
        "base_weights_sha256": base_weights_sha256(loaded.model),
    }


def train_run(spec: RunSpec, task: TaskData | None = None, on_eval=None) -> dict:
    """Train the one method of ``spec`` on its task, evaluate it on the test split(s) and return the
    summary :func:`run_one` returns (written to ``spec.output``/results.json when an output is set).

    ``task``: the already loaded data of ``spec.source`` (loaded here if None); ``on_eval`` is called
    with each validation record.
    """
    if len(spec.methods) != 1:
        raise ValueError(f"train_run trains one method, got {spec.methods}; use compare() for several")
    method = spec.methods[0]
    return run_one(
        spec.model,
        spec.source,
        method,
        spec.config_for(method),
        spec.budget_for(method),
        spec.output,
        resume=spec.resume,
        overwrite=spec.overwrite,
        new_schedule=spec.new_schedule,
        progress=spec.progress,
        task=task,
        on_eval=on_eval,
        sizes=spec.sizes_for(method),
    )


def run_one(
    model_name: str,
    source: TaskSource,
    method: str,
    config: TrainConfig,
    budget=None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    task: TaskData | None = None,
    on_eval=None,
    test_splits: bool = True,
    sizes: dict | None = None,
    chosen: dict | None = None,
    overwrite: bool = False,
    new_schedule: bool = False,
) -> dict:
    """Train one method and evaluate it: returns counts, validation history and test metrics.

    ``sizes`` gives the method explicit sizes instead of ``budget``; ``chosen`` is :func:`build`'s.
    ``output_dir`` is locked for the run; it must be empty, or hold this same run with ``resume``, or
    an old run that ``overwrite`` removes first (:func:`inducer.run_folder.prepare_run_folder`);
    ``new_schedule`` lets a resumed run continue on a new learning-rate schedule (recorded).
    """
    # Only the main process writes (and so owns and locks) the folder.
    owned = Path(output_dir) if output_dir is not None and is_main_process() else None
    with folder_lock(owned) if owned is not None else contextlib.nullcontext():
        task = task or source.load()
        seed, train_head = config.seed, config.train_head
        loaded, configs = build(model_name, task, method, budget, seed, train_head, sizes, chosen)
        logger.info(configs.summary)
        info = run_info(model_name, source, task, method, budget, configs, config, loaded)
        if owned is not None:
            # Checked before anything is written: a refused resume or overwrite leaves the folder as it was.
            prepare_run_folder(owned, info, resume, overwrite, new_schedule)
            atomic_write_text(owned / CONFIG_FILE, json.dumps(info, indent=2))
        options = EncodeOptions(**info["encode"])  # fitted to the model once, by run_info
        trainer = Trainer(loaded, task, config, output_dir, info, progress, on_eval, options=options)
        result: TrainResult = trainer.train(resume=resume, new_schedule=new_schedule)
        return _test_and_summarise(trainer, configs, result, owned, test_splits)


def _test_and_summarise(
    trainer: Trainer, configs, result: TrainResult, owned: Path | None, test_splits: bool
) -> dict:
    """:func:`run_one`'s test evaluation and summary (written to ``owned``/results.json if set)."""
    loaded, task, method = trainer.loaded, trainer.task, trainer.run_info["method"]
    count = count_parameters(loaded.model)
    tests = {}
    if test_splits:
        for split in [s for s in task.splits if s.startswith("test")]:
            tests[split] = trainer.evaluate(split, text_metrics=True)
    summary = {
        "method": method,
        "summary": configs.summary,
        "knobs": configs.knobs,
        # The method's parameters at inference (what budgets match; prefix-tuning's training-only MLP
        # excluded), and what training updates (that MLP and the task head included).
        "parameters": configs.count,
        "trainable_parameters": count.trainable,
        "head_parameters": count.head,
        "base_parameters": count.base,
        "percent_of_base": 100.0 * configs.count / max(count.base, 1),
        "select_metric": result.select_metric,
        "best_validation": result.best_metric,
        "best_step": result.best_step,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "train_seconds": result.train_seconds,
        "history": result.history,
        "test": tests,
    }
    if owned is not None:
        atomic_write_text(Path(owned) / "results.json", json.dumps(summary, indent=2, default=str))
    return summary


def read_run_info(adapter_dir: str | Path) -> dict:
    """The ``inducer_run.json`` saved with an adapter by ``inducer train`` (empty if absent)."""
    path = Path(adapter_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_trained(
    model_name: str | None, adapter_dir: str | Path, kind: str | None = None, num_labels: int | None = None
) -> tuple[LoadedModel, dict]:
    """The base model with the adapter in ``adapter_dir`` loaded (for eval / generate)."""
    info = read_run_info(adapter_dir)
    model_name = model_name or info.get("model")
    if not model_name:
        raise ValueError(f"{adapter_dir} has no {RUN_FILE} naming its base model; pass --model")
    kind = kind or info.get("kind")
    if kind is None:
        raise ValueError(f"{adapter_dir} has no {RUN_FILE} saying the task kind; pass --task")
    labels = info.get("label_names")
    num_labels = num_labels or (len(labels) if labels else (1 if kind == "regression" else None))
    loaded = load_model(model_name, kind, num_labels)
    load_adapter(loaded.model, adapter_dir)
    loaded.model.eval()
    return loaded, info


def evaluate_adapter(
    model_name: str | None,
    adapter_dir: str | Path,
    source: TaskSource | None,
    split: str,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of a saved adapter on a task split (the task of its training run by default)."""
    info = read_run_info(adapter_dir)
    if source is None:
        if "task" not in info:
            raise ValueError(f"{adapter_dir} has no {RUN_FILE}; pass --task")
        source = TaskSource.from_dict(info["task"])
    task = source.load()
    loaded, _ = load_trained(model_name, adapter_dir, task.kind, task.num_labels)
    config = config or saved_config(adapter_dir)
    options = encode_options(task, loaded, config)
    with torch.no_grad():
        return evaluate(
            loaded.model,
            loaded,
            task,
            split,
            options,
            config.eval_batch_size,
            config.max_eval_examples,
            True,
            config.num_beams,
            config.max_new_tokens,
            progress,
        )


def saved_config(adapter_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The training options saved with an adapter (defaults where none were), then ``overrides``."""
    saved = read_run_info(adapter_dir).get("train", {})
    known = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
    return TrainConfig(**{**known, **{k: v for k, v in (overrides or {}).items() if v is not None}})


def predict(
    adapter_dir: str | Path,
    inputs: list[str],
    model_name: str | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
) -> list[str]:
    """One output per input with the adapter in ``adapter_dir``: generated text for a generation
    adapter (KV-cached greedy or beam search), else the predicted label (or regression value).

    Pair inputs of classification are ``first<TAB>second``. The saved length limits (``max_length``
    replaces the input limit) are fitted to the model's positions, as in evaluation.
    """
    import datasets

    from .encoding import EncodeOptions, encode_classification, fit_to_model
    from .training import generate_texts, predict_labels

    if not inputs:
        raise ValueError("give inputs with --input TEXT (repeatable) or --file FILE")
    loaded, info = load_trained(model_name, adapter_dir)
    kind = info.get("kind")
    limit = {"max_length": max_length} if max_length else {}
    options = EncodeOptions(**{**info.get("encode", {}), **limit})
    options = fit_to_model(options, loaded.max_positions, kind == "generation" and not loaded.is_seq2seq)
    with torch.no_grad():
        if kind == "generation":
            new_tokens = max_new_tokens or info.get("train", {}).get("max_new_tokens")
            return generate_texts(
                loaded.model,
                loaded.tokenizer,
                inputs,
                options,
                loaded.is_seq2seq,
                num_beams=num_beams,
                max_new_tokens=new_tokens or info.get("max_new_tokens") or 40,
            )
        pairs = [text.split("\t", 1) for text in inputs]
        rows = datasets.Dataset.from_list(
            [{"text": p[0], "text_pair": p[1] if len(p) > 1 else None, "label": 0} for p in pairs]
        )
        encoded = encode_classification(rows, loaded.tokenizer, options.max_length, "inputs")
        regression = kind == "regression"
        predictions = predict_labels(loaded.model, encoded, loaded.tokenizer, 32, regression)
    names = info.get("label_names")
    return [f"{p:.4f}" if regression else (names[p] if names else str(p)) for p in predictions]
