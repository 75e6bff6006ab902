"""Evaluation: the loss shared with training counts target tokens only; metrics of a model on a split."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import pytest
import torch

from inducer.app.experiment import build
from inducer.data.task_source import TaskSource
from inducer.training.evaluation import compute_loss

from ..tiny import single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_generation_loss_is_on_target_tokens_only(tiny_models):
    task = TaskSource("e2e", data_dir=task_dir("e2e")).load()
    loaded, _ = build(str(tiny_models["gpt2"]), task, "lora")
    batch = {
        "input_ids": torch.tensor([[7, 8, 9, 10, 11]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
        "labels": torch.tensor([[-100, -100, -100, 10, 11]]),
    }
    loss, count = compute_loss(loaded.model, batch, "generation", seq2seq=False)
    assert count == 2
    logits = loaded.model(input_ids=batch["input_ids"]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[2:4], torch.tensor([10, 11]))
    torch.testing.assert_close(loss, expected)
    smoothed, _ = compute_loss(loaded.model, batch, "generation", seq2seq=False, label_smoothing=0.1)
    assert not torch.allclose(smoothed, loss)


def test_moved_names_have_one_home():
    """No re-export shims in a 0.1 package: what moved out of ``training`` / ``experiment`` is
    imported from its home only."""
    from inducer.app import experiment
    from inducer.training import evaluation
    from inducer.training import trainer as training

    for name in ("evaluation_loss", "generate_texts", "predict_labels"):
        assert callable(getattr(evaluation, name)) and not hasattr(training, name)
    for name in ("launched_processes", "PRECISIONS", "RUN_FILE"):
        assert not hasattr(training, name)
    assert not hasattr(experiment, "run_info") and hasattr(experiment, "run_record")
