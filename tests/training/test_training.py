"""The training loop: resume is exact, early stopping, accumulation, logs, and loss on targets only."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json

import pytest
import torch

from inducer.app.experiment import build
from inducer.data.task_source import TaskSource
from inducer.io.adapter_format import weights_path
from inducer.training.config import TrainConfig
from inducer.training.trainer import Trainer

from ..tiny import single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _trainer(tiny_models, out, method="inducer+lora", on_eval=None, callbacks=(), **overrides):
    task = TaskSource("sst2", data_dir=task_dir("sst2")).load()
    loaded, _ = build(str(tiny_models["bert"]), task, method, seed=3)
    given = {k: overrides.pop(k) for k in ("options", "train_rows", "eval_rows") if k in overrides}
    config = TrainConfig(
        **{"lr": 5e-3, "batch_size": 8, "max_length": 32, "max_steps": 8, "eval_every": 4, **overrides}
    )
    return Trainer(loaded, task, config, out, progress=False, on_eval=on_eval, callbacks=callbacks, **given)


def _trained(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.loaded.model.named_parameters() if p.requires_grad}


class _Interrupt(Exception):
    pass


def test_resume_reproduces_an_uninterrupted_run(tiny_models, tmp_path):
    # Dropout makes the result depend on the restored RNG state too, not only on the data order.
    straight = _trainer(tiny_models, tmp_path / "a", save_every=3, eval_every=100)
    straight.train()
    expected = _trained(straight)

    interrupted = _trainer(tiny_models, tmp_path / "b", save_every=3, eval_every=100)
    original = interrupted._save_checkpoint

    def save_then_stop(state):
        original(state)
        raise _Interrupt  # as if the process died right after the checkpoint at step 3

    interrupted._save_checkpoint = save_then_stop
    with pytest.raises(_Interrupt):
        interrupted.train()
    resumed = _trainer(tiny_models, tmp_path / "b", save_every=3, eval_every=100)
    result = resumed.train(resume=True)
    assert result.steps == 8
    for name, tensor in _trained(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)


def test_resume_without_checkpoint_says_how(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="--save-every"):
        _trainer(tiny_models, tmp_path).train(resume=True)


def test_early_stopping_and_best_adapter(tiny_models, tmp_path):
    trainer = _trainer(tiny_models, tmp_path, lr=1e-12, max_steps=40, eval_every=1, patience=2)
    result = trainer.train()
    assert result.stopped_early and result.steps == 3  # no change after the first evaluation
    assert result.best_step == 1
    best = json.loads((tmp_path / "best" / "inducer_run.json").read_text())
    assert best["step"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [1, 2, 3]


def test_gradient_accumulation_matches_a_larger_batch(tiny_models, tmp_path):
    # Without dropout, 2 x 4 accumulated equals one batch of 8 (same data order, same update).
    def run(**kw):
        # (inducer alone: LoRA's own dropout is not an nn.Dropout module)
        trainer = _trainer(tiny_models, None, "inducer", max_steps=3, eval_every=100, **kw)
        for module in trainer.loaded.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer.train()
        return _trained(trainer)

    big, small = run(batch_size=8), run(batch_size=4, grad_accum=2)
    # Equal batches only when the epoch order lines up: both read rows in the same permutation.
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-5, msg=name)


def test_an_empty_training_split_is_refused_before_training(tiny_models, tmp_path):
    # (It used to loop forever waiting for a first batch.)
    trainer = _trainer(tiny_models, tmp_path, train_rows=[])
    with pytest.raises(ValueError, match="training split has no rows"):
        trainer.train()
    assert not (tmp_path / "last").exists()


def test_bad_train_config_names_the_field():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_models, tmp_path, monkeypatch):
    from inducer.training import trainer as training

    trainer = _trainer(tiny_models, tmp_path / "run", save_every=2, eval_every=100)
    calls = {"n": 0}
    real_loss = training.compute_loss

    def loss_turning_nan(*args, **kwargs):
        loss, extra = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), extra

    monkeypatch.setattr(training, "compute_loss", loss_turning_nan)
    with pytest.raises(training.NonFiniteLossError, match="optimizer step 3 .*last checkpoint"):
        trainer.train()
    weights = _trained(trainer)
    assert all(torch.isfinite(t).all() for t in weights.values())
    monkeypatch.setattr(training, "compute_loss", real_loss)
    resumed = _trainer(tiny_models, tmp_path / "run", save_every=2, eval_every=100)
    assert resumed.train(resume=True).steps == 8


def test_non_finite_loss_before_any_checkpoint_says_so(tiny_models, tmp_path, monkeypatch):
    """The message claims only what is on disk: diverging at the first step leaves no checkpoint."""
    from inducer.training import trainer as training

    trainer = _trainer(tiny_models, tmp_path / "run", save_every=2, eval_every=100)
    real_loss = training.compute_loss
    monkeypatch.setattr(training, "compute_loss",
                        lambda *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(real_loss(*a, **k)))
    with pytest.raises(training.NonFiniteLossError, match="optimizer step 1 ") as caught:
        trainer.train()
    assert "no checkpoint had been written yet" in str(caught.value)
    assert "is kept" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoint").exists()


class _PrefixingWrapper(torch.nn.Module):
    """Stands in for FSDP: the model becomes a child, so every parameter name gains a prefix."""

    def __init__(self, model):
        super().__init__()
        self._fsdp_wrapped_module = model

    def forward(self, *args, **kwargs):
        return self._fsdp_wrapped_module(*args, **kwargs)


def test_a_wrapped_model_still_saves_a_complete_adapter(tiny_models, tmp_path, monkeypatch):
    """Under FSDP the prepared model is a wrapper whose parameter names carry a prefix (found on a
    GPU: the adapter then lost its inducer tensors and its base fingerprint counted them as base).
    The trainer names tensors by the model attach adapted, fingerprinted before wrapping."""
    from accelerate import Accelerator

    import inducer

    def wrapping_prepare(self, model, optimizer):
        return _PrefixingWrapper(model), optimizer

    monkeypatch.setattr(Accelerator, "prepare", wrapping_prepare)
    trainer = _trainer(tiny_models, tmp_path, method="inducer", max_steps=2, eval_every=2)
    trainer.train()
    assert isinstance(trainer.model, _PrefixingWrapper)
    saved = json.loads((tmp_path / "last" / "adapter_config.json").read_text())
    expected = {n for n, p in trainer.loaded.model.named_parameters() if p.requires_grad}
    from safetensors.torch import load_file

    assert set(load_file(weights_path(tmp_path / "last"))) == expected
    assert saved["base_model"] == inducer.fingerprint(trainer.loaded.model)
    fresh, _ = build(str(tiny_models["bert"]), trainer.task, "inducer", seed=3)
    inducer.detach(fresh.model)
    inducer.load_adapter(fresh.model, tmp_path / "last")  # the base check passes, every tensor loads


def test_evaluate_works_before_train(tiny_models, tmp_path):
    trainer = _trainer(tiny_models, tmp_path)
    before = trainer.evaluate()
    assert "loss" not in before or before["loss"] >= 0
    assert trainer.select in before
    assert trainer.train().steps == 8  # preparing first changes nothing for training


def test_callbacks_see_every_step_log_and_evaluation(tiny_models):
    from inducer.training.callbacks import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.steps, self.logged, self.evals = [], [], []

        def on_step(self, step, loss, lr):
            self.steps.append((step, loss, lr))

        def on_log(self, step, record):
            self.logged.append((step, record["split"]))

        def on_eval(self, step, metrics):
            self.evals.append(step)

    recorder, plain = Recorder(), []
    trainer = _trainer(
        tiny_models, None, log_every=3, callbacks=[recorder], on_eval=lambda step, m: plain.append(step)
    )
    result = trainer.train()
    assert [s for s, _, _ in recorder.steps] == list(range(1, 9))
    assert all(loss > 0 and lr >= 0 for _, loss, lr in recorder.steps)  # (decays to 0 at the end)
    # Logged without an output folder too: the training loss every 3 steps, each evaluation.
    assert recorder.logged == [(3, "train"), (4, "validation"), (6, "train"), (8, "validation")]
    assert recorder.evals == plain == [r["step"] for r in result.history] == [4, 8]


def test_given_options_and_rows_are_used_as_they_are(tiny_models, tmp_path):
    from inducer.data.encoding import encode_split

    first = _trainer(tiny_models, tmp_path / "a", max_steps=2)
    first.prepare()
    trainer = _trainer(
        tiny_models,
        tmp_path / "b",
        max_steps=2,
        options=first.options,
        train_rows=first.train_rows.select(range(8)),
        eval_rows=first.eval_rows,
    )
    assert trainer.options is first.options
    trainer.prepare()
    assert len(trainer.train_rows) == 8 and trainer.steps_per_epoch == 1
    assert len(encode_split(trainer.task, "train", trainer.loaded, trainer.options)) > 8
