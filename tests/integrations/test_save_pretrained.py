"""model.save_pretrained of an adapted model writes the adapter (not the whole model), with its base."""

from __future__ import annotations

import json

import pytest
import torch

import inducer
from inducer.io.adapter_format import AdapterFormatError

from .common import logits_in_fresh_process, perturb, saved_base

IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])


def _trained(model, configs):
    return perturb(inducer.attach(model, configs), seed=2)


def test_save_pretrained_writes_the_adapter_only_with_its_base(tmp_path):
    configs = [inducer.InducerConfig(), inducer.LoRAConfig(r=2)]
    model = _trained(saved_base("gpt2", tmp_path / "base"), configs)
    model.save_pretrained(tmp_path / "out", safe_serialization=True)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 2 and "adapter_config.json" in files, files  # no model.safetensors, no config.json
    assert any(f.startswith("adapter-") and f.endswith(".safetensors") for f in files)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    reloaded = inducer.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_a_fresh_process_reloads_identical_logits(tmp_path):
    model = _trained(saved_base("llama", tmp_path / "base"), [inducer.InducerConfig()])
    model.save_pretrained(tmp_path / "out")
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    got = logits_in_fresh_process(tmp_path / "out", IDS, tmp_path / "logits.pt")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_detach_gives_back_the_class_save_pretrained(tmp_path):
    model = _trained(saved_base("gpt2", tmp_path / "base"), [inducer.LoRAConfig(r=2)])
    inducer.detach(model)
    assert "save_pretrained" not in vars(model)
    model.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").is_file()


def test_other_ranks_write_nothing(tmp_path):
    model = _trained(saved_base("gpt2", tmp_path / "base"), [inducer.LoRAConfig(r=2)])
    model.save_pretrained(tmp_path / "out", is_main_process=False)
    assert not (tmp_path / "out").exists()


def test_from_pretrained_without_a_recorded_base_says_what_to_pass(tmp_path):
    from ..conftest import make_model

    model = _trained(make_model("gpt2"), [inducer.LoRAConfig(r=2)])  # built in code: no name or path
    inducer.save_adapter(model, tmp_path / "out")
    with pytest.raises(AdapterFormatError, match="records no base model.*base_model="):
        inducer.from_pretrained(tmp_path / "out")
    base = tmp_path / "base"
    make_model("gpt2").save_pretrained(base)
    loaded = inducer.from_pretrained(tmp_path / "out", base_model=base)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, model.eval()(input_ids=IDS).logits)


def test_an_adapter_from_a_bf16_base_before_float32_adapters_still_loads(tmp_path):
    # Written as inducer did before adapters were kept in float32 on half-precision bases.
    from safetensors.torch import load_file

    from inducer.io.adapter_format import weights_path

    from ..io.test_adapter_format_refusals import resign

    model = _trained(saved_base("llama", tmp_path / "base").to(torch.bfloat16), [inducer.LoRAConfig(r=2)])
    inducer.save_adapter(model, tmp_path / "old")
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(weights_path(tmp_path / "old")).items()}
    resign(tmp_path / "old", tensors)
    loaded = inducer.from_pretrained(tmp_path / "old", dtype=torch.bfloat16)
    lora = next(p for n, p in loaded.named_parameters() if n.endswith("lora.a"))
    assert lora.dtype == torch.float32
    torch.testing.assert_close(lora, dict(model.named_parameters())[
        next(n for n, _ in loaded.named_parameters() if n.endswith("lora.a"))].to(torch.bfloat16).float())
