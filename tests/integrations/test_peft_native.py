"""Inducer-tuning inside PEFT's own API (``inducer.peft``), against the real peft / transformers:
get_peft_model equals inducer.attach bit for bit, save_pretrained + from_pretrained in a fresh process,
print_trainable_parameters, mixed-batch forward and generate, compositions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import inducer
from inducer.methods import PRESETS
from inducer.peft import InducerPeftConfig
from inducer.runtime.state import adapter_state

from ..conftest import make_model
from .common import perturb, saved_base

peft = pytest.importorskip("peft")

IDS = torch.tensor([[5, 9, 13, 7, 21, 30], [8, 3, 44, 17, 2, 60]])
FIELDS = dict(r_k=3, r_v=5, init="lora")


def _pair(family: str, configs, peft_config: InducerPeftConfig, seed: int = 3):
    """(attached model, PeftModel) of the same base with the same adapter tensors."""
    ours = perturb(inducer.attach(make_model(family), configs, train_head=False), seed)
    theirs = peft.get_peft_model(make_model(family), peft_config).eval()
    entry = adapter_state(theirs.base_model.model).adapters["default"]
    with torch.no_grad():
        params = dict(ours.named_parameters())
        ours_saved = {adapter_state(ours).adapters["default"].saved_name(n): p
                      for n, p in params.items() if p.requires_grad}
        for name in entry.parameter_names(theirs.base_model.model):
            theirs.base_model.model.get_parameter(name).copy_(ours_saved[entry.saved_name(name)])
    return ours, theirs


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("preset", ["inducer", "inducer+lora", "inducer+mam", "adapter", "parallel-adapter",
                                    "kernel-mix", "mam"])
def test_get_peft_model_equals_attach_bit_for_bit(family, preset):
    """Inducer-tuning, its compositions, and (inducer=False) the methods PEFT lacks."""
    sizes = {"inducer": dict(r_k=3, r_v=5), "inducer+lora": dict(r_k=3, r_v=5, r=2),
             "inducer+mam": dict(r_k=3, r_v=5, r=2, bottleneck=4), "adapter": dict(bottleneck=4),
             "parallel-adapter": dict(bottleneck=4), "kernel-mix": dict(r=2),
             "mam": dict(bottleneck=4, prefix_length=2)}[preset]
    choice = PRESETS[preset].build(**sizes)
    peft_config = InducerPeftConfig.from_preset(preset, **sizes, task_type="CAUSAL_LM")
    ours, theirs = _pair(family, choice, peft_config)
    assert isinstance(theirs, peft.PeftModelForCausalLM)
    inducer.set_attention_path(ours, "reference")
    inducer.set_attention_path(theirs.base_model.model, "reference")
    with torch.no_grad():
        expected = ours(input_ids=IDS).logits
        got = theirs(input_ids=IDS).logits
    assert torch.equal(got, expected)
    base = make_model(family)
    with torch.no_grad():
        assert not torch.equal(got, base(input_ids=IDS).logits)  # the adapter does act


def test_print_trainable_parameters_reports_count_parameters(capsys):
    for configs in ([inducer.InducerConfig(**FIELDS)], PRESETS["inducer+mam"].build(r_k=2, r_v=4, r=2,
                                                                                     bottleneck=4)):
        counts = inducer.count_parameters(inducer.attach(make_model("llama"), configs, train_head=False))
        peft_model = peft.get_peft_model(make_model("llama"), InducerPeftConfig.from_methods(configs))
        trainable, total = peft_model.get_nb_trainable_parameters()
        assert (trainable, total) == (counts.trainable, counts.base + counts.added)
        peft_model.print_trainable_parameters()
        assert f"trainable params: {counts.trainable:,}" in capsys.readouterr().out


RELOAD = """
import json, sys, torch
import inducer.peft
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import LlamaForCausalLM
torch.set_num_threads(1)
folder, base_folder, ids, out = sys.argv[1], sys.argv[2], torch.tensor(json.loads(sys.argv[3])), sys.argv[4]
auto = AutoPeftModelForCausalLM.from_pretrained(folder).eval()
plain = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_folder), folder).eval()
with torch.no_grad():
    torch.save({"auto": auto(input_ids=ids).logits, "plain": plain(input_ids=ids).logits,
                "type": type(auto).__name__}, out)
"""


def test_save_pretrained_writes_peft_layout_and_reloads_in_a_fresh_process(tmp_path):
    base = saved_base("llama", tmp_path / "base")
    model = peft.get_peft_model(base, InducerPeftConfig(**FIELDS, task_type="CAUSAL_LM"))
    perturb(model, seed=5).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["README.md", "adapter_config.json",
                                                                      "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "INDUCER" and config["r_k"] == 3 and len(config["weights_sha256"]) == 64
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    result = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "adapter"), str(tmp_path / "base"),
                             json.dumps(IDS.tolist()), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["type"] == "PeftModelForCausalLM"
    assert torch.equal(out["auto"], expected) and torch.equal(out["plain"], expected)


def _three_adapters(family: str):
    """A PeftModel with the adapters a, b, c (different sizes and seeds) on a ``family`` base."""
    model = peft.get_peft_model(make_model(family), InducerPeftConfig(**FIELDS, task_type="CAUSAL_LM"),
                                adapter_name="a")
    model.add_adapter("b", InducerPeftConfig(r_k=2, r_v=4, task_type="CAUSAL_LM"))
    model.add_adapter("c", InducerPeftConfig.from_preset("inducer+lora", r_k=1, r_v=3, r=2,
                                                         task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".inducer_modules." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mixed_batch_forward_and_generate_equal_each_row_alone(family):
    model = _three_adapters(family)
    names = ["a", "__base__", "c", "b", "a"]
    ids = torch.randint(3, 90, (len(names), 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).logits
        generated = model.generate(input_ids=ids, adapter_names=names, max_new_tokens=5, do_sample=False,
                                   pad_token_id=0)
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=ids[row:row + 1]).logits
                    alone_generated = model.generate(input_ids=ids[row:row + 1], max_new_tokens=5,
                                                     do_sample=False, pad_token_id=0)
            else:
                model.set_adapter(name)
                alone = model(input_ids=ids[row:row + 1]).logits
                alone_generated = model.generate(input_ids=ids[row:row + 1], max_new_tokens=5,
                                                 do_sample=False, pad_token_id=0)
            torch.testing.assert_close(mixed[row:row + 1], alone, rtol=1e-5, atol=1e-5)
            # a row that ended (EOS) early is padded in the batch: compare up to its end, then padding
            length = alone_generated.shape[1]
            assert torch.equal(generated[row:row + 1, :length], alone_generated)
            assert (generated[row, length:] == 0).all()
    # the rows differ: each adapter (and the base) does something of its own
    assert len({tuple(generated[i].tolist()) for i in range(4)}) > 1


def test_set_adapter_disable_and_delete_through_peft():
    model = _three_adapters("llama")
    with torch.no_grad():
        model.set_adapter("b")
        b = model(input_ids=IDS).logits
        assert {n.split(".inducer_modules.")[1].split(".")[0] for n, p in model.named_parameters()
                if p.requires_grad} == {"b"}  # PEFT's semantics: the active adapter trains
        model.set_adapter("c")
        c = model(input_ids=IDS).logits
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
        assert torch.equal(base, make_model("llama")(input_ids=IDS).logits)
        model.delete_adapter("c")
        assert model.active_adapters == ["a"] and sorted(model.peft_config) == ["a", "b"]
        model.set_adapter("b")
        assert torch.equal(model(input_ids=IDS).logits, b)
        assert not torch.equal(b, c)
        unloaded = model.unload()
        assert torch.equal(unloaded(input_ids=IDS).logits, base)
        assert not any("inducer" in n for n, _ in unloaded.named_modules())


def test_the_peft_config_has_every_inducer_field_with_the_same_default():
    # InducerPeftConfig restates InducerConfig's fields for PEFT; a field added to one and not the other
    # (as b_lr_ratio once was) would break get_peft_model for every config.
    import dataclasses

    import inducer
    from inducer.peft import InducerPeftConfig

    ours = {f.name: f.default for f in dataclasses.fields(inducer.InducerConfig)}
    peft = {f.name: f.default for f in dataclasses.fields(InducerPeftConfig)}
    assert {name: peft.get(name, "missing") for name in ours} == ours
