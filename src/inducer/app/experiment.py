"""One experiment = base model x task x method (x budget): the glue between models, tasks, presets and
the training loop, shared by ``inducer train`` / ``eval`` / ``generate`` / ``compare`` / ``demo``.

Application entry points (with :mod:`inducer.app.runspec`, :mod:`inducer.app.compare`): :func:`train_run`
trains the one method of a ``RunSpec``; :func:`predict` runs a saved adapter on inputs;
:func:`evaluate_adapter` scores one on a task split. What runs write and return are the typed
records of :mod:`inducer.training.run_records`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.base_models import LoadedModel, load_model
from ..data.encoding import EncodeOptions, encode_options
from ..data.task_source import TaskSource
from ..data.tasks import TaskData
from ..errors import ConfigError, RunFolderError, UsageError
from ..io.adapter_format import load_adapter
from ..io.atomic import atomic_write_text
from ..io.base_identity import base_weights_sha256
from ..runtime.adapter import count_parameters
from ..sizing.budget import percent_of_base
from ..sizing.presets import PresetChoice, check_method, preset
from ..training.callbacks import TrainerCallback
from ..training.config import TrainConfig
from ..training.evaluation import evaluate
from ..training.run_folder import CONFIG_FILE, folder_lock, prepare_run_folder
from ..training.run_records import RUN_FILE, RunRecord, RunResult
from ..training.trainer import Trainer, TrainResult, set_seed

if TYPE_CHECKING:
    from .runspec import RunSpec

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """False in every process but the first under ``accelerate launch`` (which alone writes files)."""
    from accelerate import PartialState

    from ..training.data_parallel import cpu_processes

    return PartialState(cpu=cpu_processes()).is_main_process


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
    depends only on the base model's structure). An entry may also be given up front as explicit
    method configs (a ``MethodConfig`` or a list; any method name): those are attached as they are.
    Returns ``(loaded model, configs)``; ``configs.summary`` says which sizes were chosen.
    """
    from ..runtime.adapter import attach
    from ..sizing.presets import explicit_choice

    if chosen is None or method not in chosen:
        check_method(method)
    set_seed(seed)  # a new task head's initialisation follows the seed
    loaded = load_model(model_name, task.kind, task.num_labels)
    if chosen is not None and method in chosen:
        configs = chosen[method]
        if not isinstance(configs, PresetChoice):  # explicit configs: counted once, then reused
            configs = chosen[method] = explicit_choice(method, loaded.model, configs)
    else:
        configs = preset(method, loaded.model, budget, sizes=sizes or None)
        if chosen is not None:
            chosen[method] = configs
    attach(loaded.model, list(configs), train_head=train_head)
    return loaded, configs


def run_record(
    model_name: str,
    source: TaskSource,
    task: TaskData,
    method: str,
    budget,
    configs: PresetChoice,
    config: TrainConfig,
    loaded: LoadedModel,
) -> RunRecord:
    """What ``eval`` / ``generate`` / ``--resume`` need to reuse a run: model, task, labels, lengths,
    method and sizes, training options, the base's weights."""
    # Written as JSON: the training options' tuples are stored (and compared on resume) as lists.
    train = json.loads(json.dumps(asdict(config)))
    return RunRecord(
        model=model_name,
        source=source,
        kind=task.kind,
        method=method,
        label_names=list(task.label_names) if task.label_names else None,
        budget=budget,
        sizes=dict(configs.sizes),
        summary=configs.summary,
        encode=asdict(encode_options(task, loaded, config)),
        max_new_tokens=task.spec.max_new_tokens,
        train=train,
        base_weights_sha256=base_weights_sha256(loaded.model),
    )


def train_run(
    spec: RunSpec,
    task: TaskData | None = None,
    on_eval=None,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    loaded: LoadedModel | None = None,
) -> RunResult:
    """Train the one method of ``spec`` on its task, evaluate it on the test split(s) and return the
    result :func:`run_one` returns (written to ``spec.output``/results.json when an output is set).

    ``task``: the already loaded data of ``spec.source`` (loaded here if None); ``on_eval`` is called
    with each validation record, ``callbacks`` (``TrainerCallback``s) see every step, log and
    evaluation. The method's configs are ``spec.explicit_configs[method]`` when given (attached as
    they are), else its preset at the spec's budget or sizes; ``loaded``: a model with the method
    already attached (``inducer.attach``), trained as it is (``spec.model`` only names it).
    """
    if len(spec.methods) != 1:
        raise UsageError(f"train_run trains one method, got {spec.methods}; use compare() for several")
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
        chosen=dict(spec.explicit_configs),
        callbacks=callbacks,
        loaded=loaded,
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
    callbacks: Sequence[TrainerCallback] = (),
    loaded: LoadedModel | None = None,
) -> RunResult:
    """Train one method and evaluate it: returns counts, validation history and test metrics.

    ``sizes`` gives the method explicit sizes instead of ``budget``; ``chosen`` is :func:`build`'s.
    ``output_dir`` is locked for the run; it must be empty, or hold this same run with ``resume``, or
    an old run that ``overwrite`` removes first (:func:`inducer.training.run_folder.prepare_run_folder`);
    ``new_schedule`` lets a resumed run continue on a new learning-rate schedule (recorded).
    ``callbacks`` go to the ``Trainer``; ``loaded``: an already adapted model, trained as it is
    (its configs from ``chosen[method]`` if there, else read from the model).
    """
    # Only the main process writes (and so owns and locks) the folder.
    owned = Path(output_dir) if output_dir is not None and is_main_process() else None
    with folder_lock(owned) if owned is not None else contextlib.nullcontext():
        task = task or source.load()
        if loaded is None:
            seed, train_head = config.seed, config.train_head
            loaded, configs = build(model_name, task, method, budget, seed, train_head, sizes, chosen)
        else:  # preset() logged its choice in build(); an adapted model's choice is logged here, once
            configs = _adapted_choice(method, loaded, chosen)
            logger.info(configs.summary)
        record = run_record(model_name, source, task, method, budget, configs, config, loaded)
        if owned is not None:
            # Checked before anything is written: a refused resume or overwrite leaves the folder as it was.
            prepare_run_folder(owned, record, resume, overwrite, new_schedule)
            atomic_write_text(owned / CONFIG_FILE, json.dumps(record.to_json(), indent=2))
        options = EncodeOptions(**record.encode)  # fitted to the model once, by run_record
        trainer = Trainer(
            loaded, task, config, output_dir, record, progress, on_eval, options=options, callbacks=callbacks
        )
        result: TrainResult = trainer.train(resume=resume, new_schedule=new_schedule)
        return _test_and_summarise(trainer, configs, result, owned, test_splits)


def _adapted_choice(method: str, loaded: LoadedModel, chosen: dict | None) -> PresetChoice:
    """The description of an already adapted model's configs (``chosen[method]`` if given)."""
    from ..runtime.adapter import adapter_state
    from ..sizing.presets import explicit_choice

    if adapter_state(loaded.model) is None:
        raise UsageError("loaded= needs a model with a method attached (inducer.attach); or pass no model")
    given = (chosen or {}).get(method)
    return given if isinstance(given, PresetChoice) else explicit_choice(method, loaded.model, given)


def _test_and_summarise(
    trainer: Trainer, configs: PresetChoice, result: TrainResult, owned: Path | None, test_splits: bool
) -> RunResult:
    """:func:`run_one`'s test evaluation and result (written to ``owned``/results.json if set)."""
    loaded, task = trainer.loaded, trainer.task
    count = count_parameters(loaded.model)
    tests = {}
    if test_splits:
        for split in [s for s in task.splits if s.startswith("test")]:
            tests[split] = trainer.evaluate(split, text_metrics=True)
    run = RunResult(
        method=trainer.record.method,
        summary=configs.summary,
        sizes=dict(configs.sizes),
        parameters=configs.count,
        trainable_parameters=count.trainable,
        head_parameters=count.head,
        base_parameters=count.base,
        percent_of_base=percent_of_base(configs.count, count.base),
        select_metric=result.select_metric,
        best_validation=result.best_metric,
        best_step=result.best_step,
        steps=result.steps,
        stopped_early=result.stopped_early,
        train_seconds=result.train_seconds,
        history=result.history,
        test=tests,
    )
    if owned is not None:
        atomic_write_text(Path(owned) / "results.json", json.dumps(run.to_json(), indent=2, default=str))
    return run


def read_run_info(adapter_dir: str | Path) -> dict:
    """The ``inducer_run.json`` saved with an adapter, in today's JSON form whatever version wrote it
    (empty if absent): for callers that want plain data (the server)."""
    record = RunRecord.read(adapter_dir)
    return record.to_json() if record is not None else {}


def require_adapter_folder(adapter_dir: str | Path) -> None:
    """A RunFolderError (one line, exit 2) when ``adapter_dir`` is missing or not a folder."""
    if not Path(adapter_dir).is_dir():
        what = "is not a folder" if Path(adapter_dir).exists() else "does not exist"
        raise RunFolderError(f"the adapter folder {adapter_dir} {what}; give a folder written by inducer "
                             "train (e.g. runs/NAME/best) or inducer.save_adapter")


def load_trained(
    model_name: str | None, adapter_dir: str | Path, kind: str | None = None, num_labels: int | None = None
) -> tuple[LoadedModel, RunRecord | None]:
    """The base model with the adapter in ``adapter_dir`` loaded (for eval / generate), and the
    adapter's run record (None if it has none)."""
    require_adapter_folder(adapter_dir)
    record = RunRecord.read(adapter_dir)
    model_name = model_name or (record.model if record else None)
    if not model_name:
        raise UsageError(f"{adapter_dir} has no {RUN_FILE} naming its base model; pass --model")
    kind = kind or (record.kind if record else None)
    if not kind:
        raise UsageError(f"{adapter_dir} has no {RUN_FILE} saying the task kind; pass --task")
    if num_labels is None and record is not None:
        num_labels = record.num_labels()
    num_labels = num_labels or (1 if kind == "regression" else None)
    loaded = load_model(model_name, kind, num_labels)
    load_adapter(loaded.model, adapter_dir)
    loaded.model.eval()
    return loaded, record


def evaluate_adapter(
    model_name: str | None,
    adapter_dir: str | Path,
    source: TaskSource | None,
    split: str,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of a saved adapter on a task split (the task of its training run by default)."""
    require_adapter_folder(adapter_dir)
    record = RunRecord.read(adapter_dir)
    if source is None:
        if record is None or not record.source.task:
            raise UsageError(f"{adapter_dir} has no {RUN_FILE}; pass --task")
        source = record.source
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
    require_adapter_folder(adapter_dir)
    record = RunRecord.read(adapter_dir)
    if record is None:
        return TrainConfig(**{k: v for k, v in (overrides or {}).items() if v is not None})
    return record.config(overrides)


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

    from ..data.encoding import encode_classification, fit_to_model
    from ..training.evaluation import generate_texts, predict_labels

    if not inputs:
        raise ConfigError("give inputs with --input TEXT (repeatable) or --file FILE")
    loaded, record = load_trained(model_name, adapter_dir)
    if record is None:  # load_trained refuses a folder without one (no kind); kept for the type checker
        raise UsageError(f"{adapter_dir} has no {RUN_FILE}")
    kind = record.kind
    limit = {"max_length": max_length} if max_length else {}
    options = EncodeOptions(**{**record.encode, **limit})
    options = fit_to_model(options, loaded.max_positions, kind == "generation" and not loaded.is_seq2seq)
    with torch.no_grad():
        if kind == "generation":
            return generate_texts(
                loaded.model,
                loaded.tokenizer,
                inputs,
                options,
                loaded.is_seq2seq,
                num_beams=num_beams,
                max_new_tokens=record.new_tokens(max_new_tokens),
            )
        pairs = [text.split("\t", 1) for text in inputs]
        rows = datasets.Dataset.from_list(
            [{"text": p[0], "text_pair": p[1] if len(p) > 1 else None, "label": 0} for p in pairs]
        )
        encoded = encode_classification(rows, loaded.tokenizer, options.max_length, "inputs")
        regression = kind == "regression"
        predictions = predict_labels(loaded.model, encoded, loaded.tokenizer, 32, regression)
    names = record.label_names
    return [f"{p:.4f}" if regression else (names[p] if names else str(p)) for p in predictions]
