"""Both formats, one truth: inducer.peft.convert both ways, inducer.peft.load_adapter of either layout,
and the integrity rules (no pickle, checksum, base identity, shapes) on the PEFT layout, checked before
the model changes; the version guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inducer
import inducer.peft
from inducer.peft import InducerPeftConfig

from .common import perturb, saved_base

peft = pytest.importorskip("peft")
IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])


def _peft_adapter(tmp_path: Path, family: str = "llama"):
    model = peft.get_peft_model(saved_base(family, tmp_path / "base"),
                                InducerPeftConfig.from_preset("inducer+lora", r_k=2, r_v=4, r=2,
                                                              task_type="CAUSAL_LM"))
    perturb(model, seed=11).eval()
    model.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_convert_both_ways_and_load_either_layout(tmp_path):
    expected = _peft_adapter(tmp_path)
    inducer.peft.convert(tmp_path / "peft", tmp_path / "ours")  # PEFT layout -> inducer's format
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["format"] == "inducer-adapter"
    ours = inducer.load_adapter(saved_base("llama", tmp_path / "b1"), tmp_path / "ours").eval()
    either = inducer.peft.load_adapter(saved_base("llama", tmp_path / "b2"), tmp_path / "peft").eval()
    inducer.peft.convert(tmp_path / "ours", tmp_path / "back")  # inducer's format -> PEFT layout
    back = peft.PeftModel.from_pretrained(saved_base("llama", tmp_path / "b3"), tmp_path / "back").eval()
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        for model in (ours, either, back, auto):
            assert torch.equal(model(input_ids=IDS).logits, expected)
    assert load_file(str(tmp_path / "back" / "adapter_model.safetensors")).keys() == \
        load_file(str(tmp_path / "peft" / "adapter_model.safetensors")).keys()


def test_an_adapter_saved_by_inducer_converts_for_peft(tmp_path):
    model = perturb(inducer.attach(saved_base("gpt2", tmp_path / "base"), inducer.InducerConfig(r_k=2, r_v=3),
                                   train_head=False), seed=3).eval()
    inducer.save_adapter(model, tmp_path / "ours")
    inducer.peft.convert(tmp_path / "ours", tmp_path / "peft")
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        got = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "peft").eval()(input_ids=IDS).logits
    assert torch.equal(got, expected)


def _refused(tmp_path: Path, folder: Path, match: str):
    base = saved_base("llama", tmp_path / "fresh")
    before = {n: p.clone() for n, p in base.state_dict().items()}
    names = [n for n, _ in base.named_modules()]
    with pytest.raises(inducer.AdapterFormatError, match=match):
        peft.PeftModel.from_pretrained(base, folder)
    assert [n for n, _ in base.named_modules()] == names  # nothing changed
    assert all(torch.equal(before[n], t) for n, t in base.state_dict().items())
    with pytest.raises(inducer.AdapterFormatError, match=match):
        inducer.peft.load_adapter(base, folder)


def test_pickled_weights_are_refused(tmp_path):
    _peft_adapter(tmp_path)
    torch.save(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")),
               tmp_path / "peft" / "adapter_model.bin")
    _refused(tmp_path, tmp_path / "peft", "pickled weights are refused")
    os.remove(tmp_path / "peft" / "adapter_model.safetensors")  # .bin alone: PEFT itself would unpickle it
    _refused(tmp_path, tmp_path / "peft", "pickled weights are refused")


def test_altered_weights_are_refused(tmp_path):
    _peft_adapter(tmp_path)
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(weights))
    _refused(tmp_path, tmp_path / "peft", "does not match the checksum")


def test_another_base_and_other_shapes_are_refused_before_anything_changes(tmp_path):
    _peft_adapter(tmp_path)
    config_path = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    right = dict(config["base_model_fingerprint"])
    config["base_model_fingerprint"]["shapes_sha256"] = "0" * 64
    config_path.write_text(json.dumps(config))
    _refused(tmp_path, tmp_path / "peft", "different base model")
    config["base_model_fingerprint"] = right
    config["r_v"] = 5  # the saved tensors are r_v=4
    config_path.write_text(json.dumps(config))
    _refused(tmp_path, tmp_path / "peft", "do not fit this model|the adapter.s config implies")


def test_version_guard_fails_at_import_in_one_line(tmp_path):
    """A faked installed peft 0.99.0 (a dist-info found first on the path): importing inducer.peft
    fails with one line naming the tested range; nothing is deferred to a training step."""
    fake = tmp_path / "site" / "peft-0.99.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: peft\nVersion: 0.99.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    result = subprocess.run([sys.executable, "-c", "import inducer.peft"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "IncompatibleVersionError: inducer.peft was tested with peft>=0.21.2,<0.22, but peft 0.99.0 is " \
           "installed: pip install 'peft>=0.21.2,<0.22'" in last
    ok = subprocess.run([sys.executable, "-c", "import inducer.peft"], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_registration_is_a_real_peft_type():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    assert PeftType("INDUCER") is PeftType.INDUCER is inducer.peft.PEFT_TYPE
    assert PeftType.INDUCER.value == "INDUCER" and "INDUCER" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING["INDUCER"] is InducerPeftConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.INDUCER] is inducer.peft.InducerTuner
    from inducer.integrations.peft_native.registration import register

    register(InducerPeftConfig, inducer.peft.InducerTuner)  # again (a notebook reload): no error
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.INDUCER] is InducerPeftConfig
