"""The adapter directory format: what is written, and clear refusals of bad directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import inducer
from inducer.io.adapter_format import FORMAT_VERSION, weights_path

from ..conftest import make_batch, make_model


@pytest.fixture
def saved(tmp_path):
    model = inducer.attach(make_model("bert"), inducer.InducerConfig(r_k=2, r_v=3, layers=[1]))
    directory = inducer.save_adapter(model, tmp_path / "adapter")
    return model, directory


def test_written_files_hold_configs_fingerprint_and_tensors(saved):
    model, directory = saved
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["library_version"] == inducer.__version__
    assert config["methods"] == [inducer.InducerConfig(r_k=2, r_v=3, layers=[1]).to_dict()]
    assert config["base_model"]["architecture"] == "BertForSequenceClassification"
    assert config["head_tensors"] == ["classifier.weight", "classifier.bias"]
    tensors = load_file(weights_path(directory))
    inducer_names = {n for n in tensors if ".inducer." in n}
    assert inducer_names == {f"bert.encoder.layer.1.attention.self.inducer.{t}" for t in (
        "key_a", "key_a_bias", "key_b", "key_b_bias", "value_a", "value_a_bias", "value_b", "value_b_bias")}
    assert set(tensors) == inducer_names | {"classifier.weight", "classifier.bias"}


def test_head_is_restored_on_load(saved, tmp_path):
    model, directory = saved
    batch = make_batch("bert")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    inducer.save_adapter(model, directory)
    loaded = inducer.load_adapter(make_model("bert"), directory)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_other_base_model_is_refused(saved):
    _, directory = saved
    with pytest.raises(inducer.AdapterFormatError, match="different base model.*architecture"):
        inducer.load_adapter(make_model("gpt2"), directory)
    other = make_model("bert")
    other.classifier = nn.Linear(32, 5)  # same architecture, another task head
    with pytest.raises(inducer.AdapterFormatError, match="shapes_sha256"):
        inducer.load_adapter(other, directory)


def test_truncated_or_altered_weights_are_refused(saved):
    _, directory = saved
    weights = weights_path(directory)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(inducer.AdapterFormatError, match="truncated or altered"):
        inducer.load_adapter(make_model("bert"), directory)


def test_newer_format_and_corrupted_config_are_refused(saved):
    _, directory = saved
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(inducer.AdapterFormatError, match="Upgrade inducer"):
        inducer.load_adapter(make_model("bert"), directory)
    path.write_text("{ not json")
    with pytest.raises(inducer.AdapterFormatError, match="not valid JSON"):
        inducer.load_adapter(make_model("bert"), directory)


def test_missing_files_are_refused(saved, tmp_path):
    _, directory = saved
    with pytest.raises(inducer.AdapterFormatError, match="does not exist"):
        inducer.load_adapter(make_model("bert"), tmp_path / "nowhere")
    weights_path(directory).unlink()
    with pytest.raises(inducer.AdapterFormatError, match=r"adapter-[0-9a-f]{16}.safetensors is missing"):
        inducer.load_adapter(make_model("bert"), directory)
    (directory / "adapter_config.json").unlink()
    with pytest.raises(inducer.AdapterFormatError, match="adapter_config.json is missing"):
        inducer.load_adapter(make_model("bert"), directory)


def test_failed_load_leaves_the_model_unadapted(saved):
    _, directory = saved
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config["methods"][0]["r_v"] = 5  # tensors no longer match the config's shapes
    config.pop("weights_sha256")
    path.write_text(json.dumps(config))
    model = make_model("bert")
    with pytest.raises(inducer.AdapterFormatError, match="no weights_sha256"):
        inducer.load_adapter(model, directory)
    with pytest.raises(inducer.AdapterFormatError, match="shape"):
        inducer.load_adapter(model, directory, verify_checksum=False)  # the hand-made adapter opt-out
    assert not hasattr(model, "_inducer_state")
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_model_names_the_supported_families():
    with pytest.raises(inducer.UnsupportedModelError, match="Supported families: BERT"):
        inducer.attach(nn.Sequential(nn.Linear(4, 4)), inducer.InducerConfig())


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_a_failed_save_leaves_the_previous_adapter_intact(saved, monkeypatch, failing):
    model, directory = saved
    batch = make_batch("bert")
    expected = inducer.load_adapter(make_model("bert"), directory)(**batch).logits
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    if failing == "weights":
        monkeypatch.setattr("inducer.io.adapter_format.save_file", disk_full)
    else:
        monkeypatch.setattr("pathlib.Path.write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        inducer.save_adapter(model, directory)
    monkeypatch.undo()
    files = sorted(p.name for p in directory.iterdir())
    assert files == [weights_path(directory).name, "adapter_config.json"]
    assert torch.equal(inducer.load_adapter(make_model("bert"), directory)(**batch).logits, expected)


def test_sharded_parameters_are_gathered_or_refused(saved, tmp_path):
    """Under ZeRO-3 / FSDP a parameter outside its gather is an empty tensor: saving it would write an
    empty adapter (a known PEFT failure). save_adapter refuses it, and saves the gathered tensors."""
    model, directory = saved
    full = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    name = "bert.encoder.layer.1.attention.self.inducer.key_a"
    parameter = model.get_parameter(name)
    whole, parameter.data = parameter.data, torch.empty(0)  # what ZeRO-3 leaves between gathers
    with pytest.raises(ValueError, match="sharded.*state_dict=accelerator.get_state_dict"):
        inducer.save_adapter(model, tmp_path / "empty")
    gathered = inducer.save_adapter(model, tmp_path / "gathered", state_dict=full)
    parameter.data = whole
    assert torch.equal(load_file(weights_path(gathered))[name], whole)
    with pytest.raises(ValueError, match="state_dict lacks"):
        inducer.save_adapter(model, tmp_path / "partial", state_dict={})


def test_a_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_adapter(saved, tmp_path, monkeypatch):
    """Copy the folder after every file operation of a save (what a crash at that moment leaves) and
    check each copy loads as exactly the old adapter or exactly the new one."""
    import os
    import shutil
    from pathlib import Path

    import inducer.io.adapter_format as adapter_format

    model, directory = saved
    batch = make_batch("bert")
    old = inducer.load_adapter(make_model("bert"), directory)(**batch).logits
    (directory / ".adapter-weights.stale.tmp").write_bytes(b"left by a crashed save")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    new = model(**batch).logits
    moments: list[Path] = []

    def snapshot():
        moments.append(Path(shutil.copytree(directory, tmp_path / f"moment{len(moments)}")))

    def after(fn):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            snapshot()
            return result
        return wrapped

    monkeypatch.setattr(os, "replace", after(os.replace))
    monkeypatch.setattr(os, "remove", after(os.remove))
    monkeypatch.setattr(Path, "unlink", after(Path.unlink))
    monkeypatch.setattr(Path, "write_text", after(Path.write_text))
    monkeypatch.setattr(adapter_format, "save_file", after(adapter_format.save_file))
    snapshot()
    inducer.save_adapter(model, directory)
    monkeypatch.undo()
    assert len(moments) >= 6
    outcomes = []
    for moment in moments:
        logits = inducer.load_adapter(make_model("bert"), moment)(**batch).logits
        assert torch.equal(logits, old) or torch.equal(logits, new), moment.name
        outcomes.append("new" if torch.equal(logits, new) else "old")
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=["old", "new"].index)  # one switch, never back
    files = sorted(p.name for p in directory.iterdir())
    assert files == [weights_path(directory).name, "adapter_config.json"]  # stale temporaries gone
