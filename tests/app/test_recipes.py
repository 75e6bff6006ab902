"""Every bundled recipe is valid and dry-runs (a few steps, every method) on a tiny model of its family."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json

import pytest

from inducer.app.recipes import RecipeError, bundled, load_recipe

from ..tiny import run_cli, single_thread, task_dir, tiny_models  # noqa: F401

RECIPES = sorted(bundled())
FAMILY = {"roberta-base": "roberta", "gpt2": "gpt2", "facebook/bart-large": "bart"}


def test_the_paper_experiments_have_recipes():
    assert {"roberta-sst2", "roberta-mnli", "gpt2-webnlg", "gpt2-coqa", "gpt2-cnndm", "bart-xsum"} <= set(
        RECIPES
    )
    sst2 = load_recipe("roberta-sst2")
    assert sst2.train_config("inducer+lora").lr == 2e-4 and sst2.train_config("full").lr == 2e-5
    assert sst2.training["adam_betas"] == [0.9, 0.98]
    assert load_recipe("gpt2-webnlg").method_sizes["inducer"] == {"r_k": 10, "r_v": 15}


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_dry_run(name, tiny_models, tmp_path):
    recipe = load_recipe(name)
    family = FAMILY[recipe.model]
    # The recipe's budget is for the real model; on the tiny one a relative budget keeps sizes sensible.
    budget = ["--budget", "5%"] if recipe.budget is not None else []
    run_cli(
        "compare",
        "--recipe",
        name,
        "--model",
        tiny_models[family],
        "--data-dir",
        task_dir(recipe.task),
        "--output",
        tmp_path,
        "--max-steps",
        "1",
        "--max-train-examples",
        "8",
        "--max-eval-examples",
        "2",
        "--max-length",
        "24",
        "--max-target-length",
        "8",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "4",
        "--precision",
        "no",
        *budget,
        "-q",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == recipe.methods
    assert all(r["mean"] is not None for r in rows)


def test_train_with_recipe_uses_its_first_method_and_sizes(tiny_models, tmp_path):
    run_cli(
        "train",
        "--recipe",
        "gpt2-webnlg",
        "--model",
        tiny_models["gpt2"],
        "--data-dir",
        task_dir("webnlg"),
        "--output",
        tmp_path,
        "--max-steps",
        "1",
        "--max-length",
        "24",
        "--max-target-length",
        "8",
        "--max-new-tokens",
        "2",
        "-q",
    )
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "inducer" and config["sizes"] == {"r_k": 10, "r_v": 15}
    assert config["train"]["label_smoothing"] == 0.1 and config["train"]["warmup_steps"] == 500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: m\ntask: sst2\nmethods: [inducer]\nepochs: 3\n", r"unknown key\(s\) \['epochs'\]"),
        ("model: m\ntask: sst2\nmethods: [inducr]\n", r"unknown method\(s\) \['inducr'\]"),
        ("model: m\nmethods: [inducer]\n", "missing 'task'"),
        ("model: m\ntask: sst2\nmethods: [lora]\nmethod_training: {full: {lr: 1}}\n", "not in methods"),
        ("model: m\ntask: sst2\nmethods: [lora]\nmethod_sizes: {lora: {rank: 4}}\n", "sizes must be among"),
        ("model: m\ntask: sst2\nmethods: [lora]\ntraining: {precision: fp8}\n", "precision must be one of"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe")
