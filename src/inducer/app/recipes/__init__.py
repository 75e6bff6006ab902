"""Recipes: YAML files that pin a paper experiment (model, task, methods, budget, hyper-parameters).

::

    description: RoBERTa-base on SST-2 (paper section 6, NLU)
    model: roberta-base
    task: sst2
    methods: [inducer+lora, inducer, full, lora]     # train uses the first (or --method), compare all
    budget: null                                     # null: each method's paper settings
    training: {lr: 2.0e-4, batch_size: 16, epochs: 10, ...}   # any TrainConfig field
    method_training: {full: {lr: 1.0e-5}}            # per-method overrides
    method_sizes: {inducer: {r_k: 10, r_v: 15}}      # explicit sizes (instead of the budget)

Unknown keys anywhere are an error naming them and the allowed ones. Methods with ``method_sizes``
use them, the others the ``budget``. Command-line options override recipe values
(:func:`inducer.app.runspec.resolve`).
The bundled recipes are this package's data files (``inducer/recipes/*.yaml``), found with
``importlib.resources`` so that an installed wheel has them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RecipeError  # noqa: F401 (defined in the error taxonomy, raised here)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from ...training.config import TrainConfig

TOP_KEYS = {
    "description",
    "reference",
    "model",
    "task",
    "data_dir",
    "methods",
    "budget",
    "training",
    "method_training",
    "method_sizes",
    "notes",
}


@dataclass
class Recipe:
    """A parsed, validated recipe."""

    path: str
    model: str
    task: str
    methods: list[str]
    description: str = ""
    budget: str | int | None = None
    data_dir: str | None = None
    training: dict = field(default_factory=dict)
    method_training: dict[str, dict] = field(default_factory=dict)
    method_sizes: dict[str, dict] = field(default_factory=dict)

    def train_config(self, method: str, overrides: dict | None = None) -> TrainConfig:
        """The TrainConfig of ``method``: recipe training, then its per-method values, then ``overrides``."""
        values = {
            **self.training,
            **self.method_training.get(method, {}),
            **{k: v for k, v in (overrides or {}).items() if v is not None},
        }
        return TrainConfig(**values)


def _check_training(section, where: str) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise RecipeError(f"{where} must be a mapping of training options")
    unknown = set(section) - TrainConfig.field_names()
    if unknown:
        raise RecipeError(
            f"{where}: unknown option(s) {sorted(unknown)}; allowed: "
            f"{', '.join(sorted(TrainConfig.field_names()))}"
        )
    return dict(section)


def bundled() -> dict[str, Traversable]:
    """The bundled recipes by name (``roberta-sst2`` -> its file in this package)."""
    files = resources.files(__name__)
    return {f.name.removesuffix(".yaml"): f for f in files.iterdir() if f.name.endswith(".yaml")}


def resolve_path(name: str | Path) -> Path | Traversable:
    """A recipe file path, or the name of a bundled recipe (``roberta-sst2``)."""
    path = Path(name)
    if path.is_file():
        return path
    recipes = bundled()
    if str(name) in recipes:
        return recipes[str(name)]
    names = ", ".join(sorted(recipes)) or "none"
    raise RecipeError(f"recipe {str(name)!r} not found (bundled recipes: {names})")


def load_recipe(name: str | Path) -> Recipe:
    """Read and validate a recipe file (or a bundled recipe's name)."""
    import yaml

    from ...io.bounded_files import FileLimitError, read_yaml
    from ...sizing.presets import PRESETS

    path = resolve_path(name)
    try:
        data = read_yaml(path)  # size, depth and aliases bounded: a recipe may come from anyone
    except yaml.YAMLError as err:
        raise RecipeError(f"{path} is not valid YAML: {err}") from err
    except (FileLimitError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must be a YAML mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("model", "task", "methods"):
        if not data.get(key):
            raise RecipeError(f"{path}: missing {key!r}")
    methods = data["methods"]
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if m not in PRESETS]
    if bad:
        raise RecipeError(f"{path}: unknown method(s) {bad}; known: {', '.join(PRESETS)}")
    per_method = data.get("method_training") or {}
    if not isinstance(per_method, dict):
        raise RecipeError(f"{path}: method_training must map method names to training options")
    stray = set(per_method) - set(methods)
    if stray:
        raise RecipeError(
            f"{path}: method_training names {sorted(stray)}, which are not in methods {methods}"
        )
    sizes = data.get("method_sizes") or {}
    if not isinstance(sizes, dict) or set(sizes) - set(methods):
        raise RecipeError(f"{path}: method_sizes must map some of the methods {methods} to their sizes")
    for method, knobs in sizes.items():
        allowed = set(PRESETS[method].defaults) | {"layers"}
        if not isinstance(knobs, dict) or set(knobs) - allowed:
            raise RecipeError(f"{path}: method_sizes.{method}: sizes must be among {sorted(allowed)}")
    recipe = Recipe(
        path=str(path),
        model=str(data["model"]),
        task=str(data["task"]),
        methods=list(methods),
        description=str(data.get("description", "")),
        budget=data.get("budget"),
        data_dir=data.get("data_dir"),
        training=_check_training(data.get("training"), f"{path}: training"),
        method_training={
            m: _check_training(v, f"{path}: method_training.{m}") for m, v in per_method.items()
        },
        method_sizes={m: dict(v) for m, v in sizes.items()},
    )
    for method in recipe.methods:  # values are checked too (types, ranges), naming the recipe
        try:
            recipe.train_config(method)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{path}: {method}: {err}") from err
    return recipe
