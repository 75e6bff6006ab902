"""count_budget / explicit_choice, and the train_run route with explicit configs, an already adapted
model and callbacks; choose_lr over trials already run."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json

import pytest
import torch

import inducer
from inducer.app.compare import choose_lr
from inducer.app.experiment import train_run
from inducer.app.runspec import RunSpec
from inducer.data.task_source import TaskSource
from inducer.sizing.budget import count_budget
from inducer.sizing.presets import explicit_choice, preset
from inducer.training.callbacks import TrainerCallback
from inducer.training.config import TrainConfig

from ..tiny import single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")
CONFIG = TrainConfig(lr=5e-3, batch_size=8, max_length=32, max_steps=2, eval_every=1)


def _base(tiny_models):
    from inducer.data.base_models import load_model

    return load_model(str(tiny_models["bert"]), "classification", 2)


def test_count_budget_matches_the_preset_count_and_leaves_the_model_alone(tiny_models):
    model = _base(tiny_models).model
    before = {n: p.clone() for n, p in model.state_dict().items()}
    for name in ("lora", "inducer", "prefix", "bitfit"):
        choice = preset(name, model)
        assert count_budget(model, choice) == choice.count, name
    assert count_budget(model, inducer.LoRAConfig(r=4)) == count_budget(model, [inducer.LoRAConfig(r=4)])
    assert inducer.runtime.adapter.adapter_state(model) is None
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    inducer.attach(model, [inducer.LoRAConfig(r=2)])
    with pytest.raises(ValueError, match="before attach"):
        count_budget(model, inducer.LoRAConfig(r=2))


def test_explicit_choice_describes_hand_made_configs(tiny_models):
    model = _base(tiny_models).model
    choice = explicit_choice("my-lora", model, inducer.LoRAConfig(r=3))
    assert choice.count == count_budget(model, inducer.LoRAConfig(r=3)) and choice.budget is None
    assert choice.sizes["configs"][0]["r"] == 3 and "my-lora: explicit configs (LoRAConfig)" in choice.summary
    with pytest.raises(ValueError, match="at least one"):
        explicit_choice("x", model, [])


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step(self, step, loss, lr):
        self.steps.append(step)


def test_train_run_takes_explicit_configs_and_callbacks(tiny_models, tmp_path):
    source = TaskSource("sst2", data_dir=task_dir("sst2"))
    spec = RunSpec(str(tiny_models["bert"]), source, ["my-lora"], CONFIG, output=str(tmp_path),
                   explicit_configs={"my-lora": [inducer.LoRAConfig(r=3)]}, progress=False)  # fmt: skip
    seen = _Steps()
    result = train_run(spec, callbacks=[seen])
    assert seen.steps == [1, 2] and result.steps == 2
    assert result.sizes["configs"][0]["r"] == 3
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "my-lora"


def test_train_run_trains_an_already_adapted_model_as_it_is(tiny_models, tmp_path):
    loaded = _base(tiny_models)
    inducer.attach(loaded.model, [inducer.LoRAConfig(r=2)])
    before = {n: p.clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    source = TaskSource("sst2", data_dir=task_dir("sst2"))
    spec = RunSpec(str(tiny_models["bert"]), source, ["lora"], CONFIG, output=str(tmp_path), progress=False)
    result = train_run(spec, loaded=loaded)
    assert result.parameters == inducer.count_parameters(loaded.model).budget
    trained = dict(loaded.model.named_parameters())
    assert any(not torch.equal(trained[n], p) for n, p in before.items())  # this very model was trained
    with pytest.raises(ValueError, match="method attached"):
        train_run(RunSpec(str(tiny_models["bert"]), source, ["lora"], CONFIG, progress=False),
                  loaded=_base(tiny_models))  # fmt: skip


def test_choose_lr_picks_from_trials_already_run():
    trials = [
        {"lr": 1e-4, "validation": 0.80, "select_metric": "accuracy"},
        {"lr": 1e-3, "validation": 0.85, "select_metric": "accuracy"},
        {"lr": 1e-2, "validation": 0.85, "select_metric": "accuracy"},
    ]
    assert choose_lr(trials) == 1e-3  # ties: the first
    losses = [{"lr": lr, "validation": v, "select_metric": "loss"} for lr, v in [(1e-4, 2.0), (1e-3, 1.5)]]
    assert choose_lr(losses) == 1e-3
    with pytest.raises(ValueError, match="no trials"):
        choose_lr([])
