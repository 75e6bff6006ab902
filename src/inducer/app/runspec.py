"""The application layer's description of a run: ``RunSpec``, and the one rule that builds it.

``RunSpec`` holds everything ``inducer train`` / ``compare`` / ``demo`` and the benchmarks need: the
base model, where the data comes from, the methods, a budget or explicit sizes, the training options
(shared and per method), fixed learning rates (the others are searched on a grid), seeds and the
output folder. :func:`resolve` builds one from a recipe and the command line with one precedence
rule: an explicit command-line value beats the recipe's value, which beats the default.

The work itself: :func:`inducer.app.experiment.train_run` (one method), :func:`inducer.app.compare.compare`
(several methods side by side) and :func:`inducer.app.experiment.predict` (inference with an adapter).
This module imports no deep-learning library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..training.config import TrainConfig

if TYPE_CHECKING:
    from ..data.task_source import TaskSource
    from .recipes import Recipe

BOTH_SIZES_AND_BUDGET = (
    "--budget and --sizes cannot be combined: a budget searches the sizes, --sizes gives them; choose one"
)
COMMANDS = ("train", "compare", "demo")
COLUMNS = ("text", "text_pair", "label", "source", "target")
SOURCE_KEYS = ("data_dir", "train_file", "validation_file", "test_file")


@dataclass
class RunSpec:
    """One training run (``train_run``) or comparison (``compare``), fully resolved.

    Attributes:
        model: hub id, local folder or offline shortcut of the base model.
        source: where the task's data comes from.
        methods: method names; ``train_run`` needs exactly one.
        config: the training options of methods without their own entry in ``method_configs``.
        budget: parameter budget (count or ``"0.5%"``) every method is sized to; None: paper settings.
        sizes: explicit sizes of some methods; these methods ignore the budget (a recipe's
            ``method_sizes``, or ``--sizes``).
        method_configs: a method's own training options (a recipe's ``method_training``).
        explicit_configs: a method's configs given as ``MethodConfig`` objects (one, a list, or a
            ``PresetChoice``), attached as they are: no budget search, any method name.
        lrs: fixed learning rates; ``compare`` picks the others on validation from ``lr_grids``.
        lr_grids: a method's learning-rate grid (default: ``compare.LR_GRIDS``).
        seeds: the seeds of ``compare``'s runs per method (default: ``[config.seed]``).
        output: output folder (None: write nothing).
        resume: ``train_run`` continues from ``output/checkpoint`` (the same run only).
        overwrite: a run's folder that holds an earlier run is cleared first (else: refused).
        new_schedule: with ``resume``, continue on the new learning-rate schedule (``lr``,
            ``max_steps``, ``epochs``, warmup) instead of refusing the change; recorded in config.json.
        save_runs: ``compare`` also keeps every run's adapters and logs.
        progress: show progress bars.
        title: title of ``compare``'s results table.
    """

    model: str
    source: TaskSource
    methods: list[str]
    config: TrainConfig = field(default_factory=TrainConfig)
    budget: str | int | None = None
    sizes: dict[str, dict] = field(default_factory=dict)
    method_configs: dict[str, TrainConfig] = field(default_factory=dict)
    explicit_configs: dict[str, object] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    lr_grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    new_schedule: bool = False
    save_runs: bool = False
    progress: bool = True
    title: str = ""

    def __post_init__(self) -> None:
        if not self.seeds:
            self.seeds = [self.config.seed]
        if not self.title:
            self.title = f"{self.model} x {self.source.task}" + (
                f", budget {self.budget}" if self.budget is not None else ""
            )

    def config_for(self, method: str) -> TrainConfig:
        """The training options of ``method``."""
        return self.method_configs.get(method, self.config)

    def sizes_for(self, method: str) -> dict | None:
        """The explicit sizes of ``method`` (None: sized by the budget, or the paper's settings)."""
        return self.sizes.get(method) or None

    def budget_for(self, method: str) -> str | int | None:
        """The budget ``method`` is sized to: None where it has explicit sizes."""
        return None if self.sizes_for(method) else self.budget


def parse_sizes(text: str | None) -> dict | None:
    """``'r_k=10,r_v=15'`` -> ``{'r_k': 10, 'r_v': 15}`` (None for no text)."""
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            sizes[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--sizes: {part!r} is not NAME=INTEGER (e.g. --sizes r_k=10,r_v=15)") from None
    return sizes


def task_source(task: str, options: dict) -> TaskSource:
    """A ``TaskSource`` from flat options: ``data_dir``, ``train_file``, ``validation_file``,
    ``test_file`` and the column names (``text_column``, ... as on the command line; None: default)."""
    from ..data.task_source import TaskSource
    from ..data.tasks import Columns

    columns = {key: options[f"{key}_column"] for key in COLUMNS if options.get(f"{key}_column") is not None}
    files = {key: options.get(key) for key in SOURCE_KEYS}
    return TaskSource(task, **files, columns=Columns(**columns))


def _methods(recipe: Recipe | None, given, command: str) -> list[str]:
    if isinstance(given, str):
        given = [m.strip() for m in given.split(",") if m.strip()]
    if given:
        return list(given)
    if recipe is None:
        return []
    return recipe.methods[:1] if command == "train" else list(recipe.methods)


# RunSpec fields resolve builds from other inputs (and the recipe) rather than taking as given.
DERIVED_FIELDS = ("source", "config", "method_configs")
# resolve's inputs that are not RunSpec fields: what the derived fields (and two fields given in
# the command line's terms) are built from.
INPUTS = (
    "task", *SOURCE_KEYS, *(f"{key}_column" for key in COLUMNS),  # -> source
    "training",  # TrainConfig fields -> config, method_configs
    "seed_count",  # --seeds N: N seeds counting up from the configured seed -> seeds
    "size_text",  # --sizes 'r_k=10,r_v=15' (or a dict), the same sizes for every method -> sizes
)  # fmt: skip


def resolve_keys() -> set[str]:
    """The keys :func:`resolve` takes: every ``RunSpec`` field not in :data:`DERIVED_FIELDS` (with the
    field's own meaning and type), and :data:`INPUTS`."""
    return {f.name for f in dataclasses.fields(RunSpec)} - set(DERIVED_FIELDS) | set(INPUTS)


def _check_given(given: dict) -> None:
    """Refuse keys resolve does not take, and ``seeds`` given as a count (a RunSpec's seeds are a list)."""
    keys = resolve_keys()
    unknown = set(given) - keys
    if unknown:
        raise ConfigError(f"resolve: unknown argument(s) {sorted(unknown)}; known: {', '.join(sorted(keys))}")
    seeds = given.get("seeds")
    listed = isinstance(seeds, (list, tuple)) and all(isinstance(s, int) for s in seeds)
    if seeds is not None and not listed:
        raise ConfigError(f"resolve: seeds is the list of seeds (RunSpec.seeds), got {seeds!r}; "
                         "give seed_count=N for N seeds counting up from the seed")  # fmt: skip
    if seeds is not None and "seed_count" in given:
        raise ConfigError("resolve: give seeds (the list) or seed_count (how many), not both")
    if "sizes" in given and "size_text" in given:
        raise ConfigError("resolve: give sizes (per method) or size_text (every method), not both")


def resolve(recipe: Recipe | None, cli_args: dict, command: str = "compare") -> RunSpec:
    """The ``RunSpec`` of ``command`` (train / compare / demo): explicit ``cli_args`` > ``recipe`` > defaults.

    ``cli_args`` keys (a missing key or None means "not given", :func:`resolve_keys`): a ``RunSpec``
    field's name gives that field (``methods`` may also be comma-separated; ``train``: one; ``seeds``:
    the list; ``sizes``: method -> sizes; ``lrs``: fixed rates, over those found below), except the
    fields built here (:data:`DERIVED_FIELDS`), which come from :data:`INPUTS`: ``task`` and the data
    options of :func:`task_source` (``data_dir``, ...; ``text_column``, ...), ``training``
    (TrainConfig fields), ``seed_count`` (how many seeds, counting up from the configured seed; the
    command line's ``--seeds``) and ``size_text`` (``'r_k=10,r_v=15'`` or a dict: the command line's
    ``--sizes``, for every method). Without a recipe only ``cli_args`` and defaults count. ``train``
    uses the recipe's first method when none is given, ``compare`` all of them.

    A learning rate given on the command line, or by the recipe for a method, is fixed; ``compare``
    picks the others on validation. A command-line ``budget`` replaces the recipe's sizes and
    command-line sizes the recipe's budget; both on the command line are an error.
    """
    from ..sizing.presets import check_method

    if command not in COMMANDS:
        raise ConfigError(f"resolve: command must be one of {COMMANDS}, got {command!r}")
    given = {k: v for k, v in cli_args.items() if v is not None}
    _check_given(given)
    model = given.get("model") or (recipe.model if recipe else None)
    task = given.get("task") or (recipe.task if recipe else None)
    methods = _methods(recipe, given.get("methods"), command)
    if not model:
        raise ConfigError(
            "--model is required (or a --recipe naming one)"
            if command == "train"
            else "--model and --methods are required (or a --recipe naming them)"
        )
    if not methods:
        raise ConfigError(
            "--method is required (e.g. --method inducer; `inducer info` lists them)"
            if command == "train"
            else "--model and --methods are required (or a --recipe naming them)"
        )
    if command == "train" and len(methods) != 1:
        raise ConfigError(f"train runs one method, got {methods}; use `inducer compare` for several")
    for method in methods:
        check_method(method)
    if not given.get("output") and command != "demo":
        raise ConfigError(
            "--output is required: the folder for adapters, logs and results"
            if command == "train"
            else "--output is required: the folder for results.json, results.md and results.png"
        )
    if not task:
        raise ConfigError(
            "--task is required (a built-in task name, or classification / regression / generation with "
            "--train-file)"
        )
    training = dict(given.get("training") or {})
    shared = {**(recipe.training if recipe else {}), **training}
    config = TrainConfig(**shared)
    method_configs = {m: recipe.train_config(m, training) for m in methods if recipe and m in recipe.methods}

    def config_of(method: str) -> TrainConfig:
        return method_configs.get(method, config)

    # Fixed learning rates: the command line's for every method, else a recipe's (the paper's).
    recipe_lr = {
        m for m in methods if recipe and "lr" in {**recipe.training, **recipe.method_training.get(m, {})}
    }
    lrs = {m: config_of(m).lr for m in methods if "lr" in training or m in recipe_lr}
    lrs.update(given.get("lrs") or {})

    sizes = given.get("size_text")
    sizes = parse_sizes(sizes) if isinstance(sizes, str) else sizes
    budget = given.get("budget")
    if budget is not None and (sizes or given.get("sizes")):
        raise ConfigError(BOTH_SIZES_AND_BUDGET)
    if given.get("sizes"):
        per_method = {m: dict(s) for m, s in given["sizes"].items()}
    elif sizes:
        per_method = {m: dict(sizes) for m in methods}
    elif budget is None and recipe is not None:
        budget = recipe.budget
        per_method = {m: dict(recipe.method_sizes[m]) for m in methods if m in recipe.method_sizes}
    else:
        per_method = {}
    data_dir = given.get("data_dir") or (recipe.data_dir if recipe else None)
    source = task_source(task, {**given, "data_dir": data_dir})
    seeds = list(given.get("seeds") or [config.seed + i for i in range(given.get("seed_count", 1))])
    # The fields given as they are (each RunSpec field not built above).
    passed = {k: v for k, v in given.items() if k in resolve_keys() - set(INPUTS)}
    built = dict(model=model, source=source, methods=methods, config=config, budget=budget, sizes=per_method,
                 method_configs=method_configs, lrs=lrs, seeds=seeds)  # fmt: skip
    return RunSpec(**{**passed, **built})
