"""inducer.from_pretrained by hub id from a pre-filled local hub cache (offline), push_to_hub through a
local stand-in of huggingface_hub's API calls, and the model card. The network is never used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import inducer
from inducer.io.adapter_format import AdapterFormatError
from inducer.io.hub import model_card

from ..integrations.common import perturb, saved_base

IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str, files: Path) -> None:
    """Put ``files`` into ``cache`` as huggingface_hub stores a downloaded snapshot of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files, repo / "snapshots" / COMMIT)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for huggingface_hub and transformers (which read it when imported)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _trained_adapter(tmp_path: Path, base_name: str | None = None):
    configs = [inducer.InducerConfig(), inducer.LoRAConfig(r=2)]
    model = perturb(inducer.attach(saved_base("gpt2", tmp_path / "base"), configs), seed=4)
    if base_name is not None:
        model.config._name_or_path = base_name  # as if loaded from the hub by that id
    inducer.save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        return model.eval(), model(input_ids=IDS).logits


def test_from_pretrained_by_hub_id_from_the_local_cache_offline(tmp_path, offline):
    model, expected = _trained_adapter(tmp_path, base_name="tiny/gpt2")
    cache = tmp_path / "cache"
    _cache_repo(cache, "tiny/gpt2", tmp_path / "base")
    _cache_repo(cache, "tiny/gpt2-inducer", tmp_path / "adapter")
    loaded = inducer.from_pretrained("tiny/gpt2-inducer", cache_dir=cache, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_from_pretrained_from_a_folder(tmp_path):
    _, expected = _trained_adapter(tmp_path)
    loaded = inducer.from_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_a_hub_id_missing_from_the_cache_offline_is_one_clear_error(tmp_path, offline):
    with pytest.raises(AdapterFormatError, match="not in the local hub cache"):
        inducer.from_pretrained("tiny/absent", cache_dir=tmp_path, local_files_only=True)


def test_a_base_of_another_shape_is_refused_by_fingerprint(tmp_path):
    _trained_adapter(tmp_path)
    from transformers import GPT2Config, GPT2LMHeadModel

    other = tmp_path / "other"
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=16, n_layer=1, n_head=2)).save_pretrained(other)
    with pytest.raises(AdapterFormatError, match="different base model"):
        inducer.from_pretrained(tmp_path / "adapter", base_model=other)


def test_push_to_hub_uploads_the_adapter_and_a_model_card(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    model, expected = _trained_adapter(tmp_path, base_name="tiny/gpt2")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, kwargs)
        shutil.copytree(folder_path, tmp_path / "uploaded")  # the folder is temporary
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = inducer.push_to_hub(model, "me/tiny-inducer", private=True, metrics={"eval_loss": 1.25})
    assert result == "commit-info"
    assert calls["create"] == ("me/tiny-inducer", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"][0] == "me/tiny-inducer"
    uploaded = tmp_path / "uploaded"
    config = json.loads((uploaded / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny/gpt2"
    card = (uploaded / "README.md").read_text()
    assert "base_model: tiny/gpt2" in card and "library_name: inducer" in card and "eval_loss" in card
    loaded = inducer.from_pretrained(uploaded, base_model=tmp_path / "base")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_the_model_card_states_methods_sizes_base_and_parameters(tmp_path):
    model, _ = _trained_adapter(tmp_path, base_name="tiny/gpt2")
    card = model_card(model)
    assert '"method": "inducer"' in card and '"r": 2' in card and "- lora" in card
    assert str(inducer.count_parameters(model)) in card
    assert "Training metrics" not in card  # none known


def test_save_pretrained_with_push_to_hub_uploads(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    model, _ = _trained_adapter(tmp_path)
    pushed = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, *, repo_id, folder_path, **kw: pushed.append(repo_id))
    model.save_pretrained(tmp_path / "my-adapter", push_to_hub=True)
    assert pushed == ["my-adapter"]
