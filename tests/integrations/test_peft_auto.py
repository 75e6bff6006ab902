"""export_peft records the base, so PEFT's AutoPeftModel* loads the folder alone."""

from __future__ import annotations

import json

import torch

import inducer

from .common import perturb, saved_base

IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])


def test_auto_peft_model_loads_an_exported_lora(tmp_path):
    from peft import AutoPeftModelForCausalLM

    model = perturb(inducer.attach(saved_base("llama", tmp_path / "base"), [inducer.LoRAConfig(r=2)]), seed=1)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    inducer.export_peft(model, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
