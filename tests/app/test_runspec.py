"""RunSpec and its one precedence rule (command line > recipe > default), and compare's single budget
search per method."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import pytest

from inducer.app.recipes import load_recipe
from inducer.app.runspec import RunSpec, parse_sizes, resolve

from ..tiny import FIXTURES, single_thread, tiny_models  # noqa: F401

BASE = {"model": "m", "task": "sst2", "output": "out"}


def test_command_line_beats_recipe_beats_default():
    recipe = load_recipe("roberta-sst2")
    spec = resolve(recipe, {**BASE, "training": {"epochs": 1}}, "train")
    assert spec.model == "m" and spec.methods == ["inducer+lora"]  # the recipe's first method
    assert spec.config.epochs == 1 and spec.config.batch_size == 16 and spec.config.adam_eps == 1e-6
    assert spec.config.log_every == 10  # default: neither gave it
    both = resolve(recipe, {"output": "out"}, "compare")
    assert both.model == "roberta-base" and both.methods == recipe.methods
    assert both.config_for("full").lr == 2e-5 and both.lrs["full"] == 2e-5  # a recipe's lr is fixed
    fixed = resolve(recipe, {"output": "out", "training": {"lr": 1e-3}}, "compare")
    assert set(fixed.lrs.values()) == {1e-3} and set(fixed.lrs) == set(recipe.methods)


def test_recipe_sizes_and_budget_give_way_to_the_command_line():
    recipe = load_recipe("gpt2-webnlg")
    spec = resolve(recipe, {"output": "out"}, "compare")
    assert spec.sizes_for("inducer") == {"r_k": 10, "r_v": 15} and spec.budget_for("inducer") is None
    assert spec.budget_for("lora") == recipe.budget
    budget = resolve(recipe, {"output": "out", "budget": "1%"}, "compare")
    assert budget.sizes == {} and budget.budget_for("inducer") == "1%"
    sized = resolve(recipe, {"output": "out", "size_text": "r_k=3,r_v=4", "methods": "inducer"}, "compare")
    assert sized.budget is None and sized.sizes_for("inducer") == {"r_k": 3, "r_v": 4}


def test_sizes_with_budget_is_one_clear_error():
    with pytest.raises(ValueError, match="--budget and --sizes cannot be combined"):
        resolve(None, {**BASE, "methods": ["inducer"], "budget": "1%", "size_text": "r_k=2"}, "train")
    with pytest.raises(ValueError, match="is not NAME=INTEGER"):
        parse_sizes("r_k=two")


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        ({"task": "sst2", "output": "o", "methods": ["lora"]}, "train", "--model is required"),
        ({"model": "m", "task": "sst2", "output": "o"}, "train", "--method is required"),
        ({"model": "m", "task": "sst2", "methods": ["lora"]}, "compare", "--output is required"),
        ({"model": "m", "output": "o", "methods": ["lora"]}, "compare", "--task is required"),
        ({**BASE, "methods": ["lora", "bitfit"]}, "train", "train runs one method"),
        ({**BASE, "methods": ["lorra"]}, "compare", "unknown method 'lorra'"),
        ({**BASE, "methods": ["lora"], "lr": 1}, "compare", "unknown argument(s) ['lr']"),
    ],
)
def test_missing_or_wrong_arguments_are_refused(args, command, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve(None, args, command)


@pytest.mark.usefixtures("single_thread")
def test_compare_searches_each_methods_budget_once(tiny_models, tmp_path, monkeypatch):
    from inducer.app import compare, experiment
    from inducer.sizing import presets

    calls = []

    def counting_preset(*args, **kwargs):
        calls.append(args[0])
        return presets.preset(*args, **kwargs)

    monkeypatch.setattr(experiment, "preset", counting_preset)
    source = {"task": "regression", "train_file": str(FIXTURES / "files" / "rating.jsonl")}
    spec = resolve(
        None,
        {
            "model": tiny_models["bert"],
            **source,
            "methods": "inducer,lora",
            "budget": "2%",
            "seed_count": 2,
            "output": str(tmp_path),
            "progress": False,
            "training": {"max_steps": 1, "max_length": 16},
        },
        "compare",
    )
    spec.lr_grids = {"inducer": (1e-3, 3e-3), "lora": (1e-3, 3e-3)}
    result = compare.compare(spec)
    assert calls == ["inducer", "lora"]  # 2 grid runs + 2 seeds each, one search per method
    runs = result.runs["inducer"]
    assert runs[0].sizes == runs[1].sizes
    assert [r.method for r in result.rows] == ["inducer", "lora"]


def test_runspec_defaults():
    from inducer.data.task_source import TaskSource

    spec = RunSpec("m", TaskSource("sst2"), ["lora"], budget="1%")
    assert spec.seeds == [42] and spec.title == "m x sst2, budget 1%"
    assert spec.config_for("lora") is spec.config


def test_resolve_takes_runspec_fields_as_they_are_and_seeds_as_a_list():
    import dataclasses

    from inducer.app.runspec import DERIVED_FIELDS, INPUTS, RunSpec, resolve_keys

    fields = {f.name for f in dataclasses.fields(RunSpec)}
    assert resolve_keys() == fields - set(DERIVED_FIELDS) | set(INPUTS)  # checked against RunSpec itself
    spec = resolve(None, {**BASE, "methods": ["lora"], "seeds": [7, 3], "lrs": {"lora": 0.1}}, "compare")
    assert spec.seeds == [7, 3] and spec.lrs == {"lora": 0.1}
    counted = resolve(None, {**BASE, "methods": ["lora"], "seed_count": 3, "training": {"seed": 5}})
    assert counted.seeds == [5, 6, 7]
    with pytest.raises(ValueError, match="seed_count=N"):
        resolve(None, {**BASE, "methods": ["lora"], "seeds": 2}, "compare")
    with pytest.raises(ValueError, match="not both"):
        resolve(None, {**BASE, "methods": ["lora"], "seeds": [1], "seed_count": 1}, "compare")
    sized = resolve(None, {**BASE, "methods": ["lora"], "sizes": {"lora": {"r": 2}}}, "compare")
    assert sized.sizes == {"lora": {"r": 2}} and sized.budget_for("lora") is None
