"""PEFT interoperability of LoRA: parity with PEFT's LoRA, export to and import from PEFT."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import inducer
from inducer.io.peft_interop import PeftInteropError
from inducer.methods.lora import LoRAModule

from .conftest import logits_of, make_batch, make_model

peft = pytest.importorskip("peft")

PEFT_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _randomise(model, scale=0.2):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora" in name:  # X.lora.a/b, or X.lora_q.a/b for a slice of a fused layer
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_our_lora_equals_peft_lora_given_the_same_weights(family, tmp_path):
    """PEFT trains a LoRA; its saved weights, imported, give the same logits in our framework."""
    batch = make_batch(family)
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=PEFT_TARGETS[family],
                             fan_in_fan_out=family == "gpt2", init_lora_weights=False)
    peft_model = peft.get_peft_model(make_model(family).double(), config)
    expected = logits_of(peft_model, batch)
    peft_model.save_pretrained(tmp_path)
    ours = inducer.import_peft(make_model(family).double(), tmp_path)
    assert sum(isinstance(m, LoRAModule) for m in ours.modules()) == 2 * len(PEFT_TARGETS[family])
    torch.testing.assert_close(logits_of(ours, batch), expected)


@pytest.mark.parametrize(("family", "targets"), [("bert", ["q", "v"]), ("gpt2", ["q", "v"]),
                                                 ("gpt2", ["o", "ffn_in"]), ("llama", ["q", "k", "o"])])
def test_export_loads_in_peft_with_identical_outputs(family, targets, tmp_path):
    batch = make_batch(family)
    model = inducer.attach(make_model(family).double(), inducer.LoRAConfig(r=2, alpha=5, targets=targets),
                           train_head=False)
    _randomise(model)
    expected = logits_of(model, batch)
    inducer.export_peft(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"
    loaded = peft.PeftModel.from_pretrained(make_model(family).double(), tmp_path)
    torch.testing.assert_close(logits_of(loaded, batch), expected)
    # And back: import gives our outputs again.
    again = inducer.import_peft(make_model(family).double(), tmp_path)
    torch.testing.assert_close(logits_of(again, batch), expected)


def test_unsupported_peft_lora_variants_are_refused(tmp_path):
    peft_model = peft.get_peft_model(make_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"],
                                                                          use_dora=True))
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(PeftInteropError, match="use_dora"):
        inducer.import_peft(make_model("llama"), tmp_path)


def test_adapter_for_another_model_is_refused(tmp_path):
    peft_model = peft.get_peft_model(make_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path)
    model = make_model("gpt2")
    with pytest.raises(PeftInteropError, match="which this model lacks"):
        inducer.import_peft(model, tmp_path)
    assert not hasattr(model, "_inducer_state")
