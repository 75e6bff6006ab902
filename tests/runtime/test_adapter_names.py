"""Adapters keyed by name: each method creates its modules in slots keyed by the adapter's name, so a
second adapter moves nothing; every caller names the adapter it means; attach's extension point
(inducer.runtime.listeners) installs the save hooks on real models only; the core imports no integration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import inducer
from inducer.core.naming import model_module_name, saved_module_name, slot_name, split_slot
from inducer.integrations.save_hooks import HOOK_MARK, restore_adapter
from inducer.io.adapter_format import weights_path
from inducer.io.hub import model_card
from inducer.runtime import listeners
from inducer.runtime.state import adapter_state, named_adapter, task_head_names
from inducer.sizing.presets import explicit_choice

from ..conftest import logits_of, make_batch, make_model

ATTACHED: list = []  # models the recording listener below saw, in order


def record_attach(model) -> None:
    """A listener's on_attach (registered by module path in the tests below)."""
    ATTACHED.append(model)


def record_detach(model) -> None:
    """A listener's on_detach."""


def _noise(model, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def test_slot_names_map_to_saved_names_and_back():
    assert slot_name("inducer", "default") == "inducer" and slot_name("lora_q", "sst2") == "lora_q__sst2"
    assert split_slot("lora_q__a__b") == ("lora_q", "a__b") and split_slot("prefix") == ("prefix", "default")
    module = "transformer.h.0.attn.c_attn.lora_q__sst2"
    assert saved_module_name(module, "sst2") == "transformer.h.0.attn.c_attn.lora_q"
    assert model_module_name("transformer.h.0.attn.c_attn.lora_q", "sst2") == module
    assert saved_module_name("prefix_encoder", "default") == "prefix_encoder"
    with pytest.raises(ValueError, match="not a module of the adapter 'mnli'"):
        saved_module_name(module, "mnli")


def test_a_second_adapter_moves_nothing_of_the_first():
    model = make_model("gpt2")
    prefix = inducer.PrefixConfig(length=2, reparam_hidden=4)
    inducer.attach(model, [inducer.InducerConfig(r_k=2, r_v=2), prefix])
    before = dict(model.named_modules())
    inducer.attach(model, [prefix, inducer.LoRAConfig(r=2)], name="b")
    after = dict(model.named_modules())
    assert all(after[name] is module for name, module in before.items())
    entry = adapter_state(model).adapters["b"]
    assert entry.added and all(split_slot(name.rpartition(".")[2])[1] == "b" for name in entry.added)
    assert "prefix_encoder__b" in entry.added
    assert entry.saved_name("prefix_encoder__b.hidden.weight") == "prefix_encoder.hidden.weight"
    assert entry.saved_name("lm_head.weight") == "lm_head.weight"  # not one of its modules: unchanged


def test_every_caller_names_the_adapter_it_means():
    model = make_model("gpt2")
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=2), name="a")
    state = adapter_state(model)
    assert state.adapter().name == "a"  # the only one
    inducer.attach(model, inducer.LoRAConfig(r=2), name="b")
    for gone in ("configs", "train_head", "unfrozen", "head", "only"):
        assert not hasattr(state, gone)  # nothing means "the only adapter" silently any more
    assert state.adapter().name == "a" and named_adapter(model, "b").configs == [inducer.LoRAConfig(r=2)]
    with pytest.raises(ValueError, match=r"save_adapter: the model holds the adapters \['a', 'b'\]"):
        state.adapter(caller="save_adapter", pick_active=False)
    inducer.set_adapter(model, ["a", "b"])
    with pytest.raises(ValueError, match=r"model_card: .*\['a', 'b'\] \(active: \['a', 'b'\]\); pass name="):
        model_card(model)
    with pytest.raises(ValueError, match="no adapter named 'c'"):
        named_adapter(model, "c")
    card = model_card(model, name="b")
    assert '"method": "lora"' in card and '"method": "inducer"' not in card
    choice = explicit_choice("b-only", model, adapter="b")
    assert choice.configs == (inducer.LoRAConfig(r=2),)
    assert choice.count == inducer.count_parameters(model, "b").budget


def test_export_peft_takes_the_named_adapters_own_modules(tmp_path):
    alone = make_model("gpt2")
    inducer.attach(alone, inducer.LoRAConfig(r=2))
    _noise(alone)
    inducer.export_peft(alone, tmp_path / "alone")
    model = make_model("gpt2")
    inducer.attach(model, inducer.LoRAConfig(r=2, targets=["v"]), name="other")
    inducer.attach(model, inducer.LoRAConfig(r=2), name="sst2")
    ours = dict(alone.named_parameters())
    with torch.no_grad():
        for name in named_adapter(model, "sst2").parameter_names(model):
            dict(model.named_parameters())[name].copy_(ours[named_adapter(model, "sst2").saved_name(name)])
    inducer.set_adapter(model, "sst2")
    inducer.export_peft(model, tmp_path / "named")
    expected = load_file(str(tmp_path / "alone" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "named" / "adapter_model.safetensors"))
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_restore_adapter_fills_a_named_adapter(tmp_path):
    model = make_model("gpt2")
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=2), name="x")
    _noise(model)
    folder = inducer.save_adapter(model, tmp_path / "x")
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    _noise(model, seed=9)
    restore_adapter(model, folder)
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
    assert any(".inducer__x." in n for n in saved) and all(
        ".inducer." in k for k in load_file(str(weights_path(folder))))


def test_merge_and_unload_folds_the_active_adapter_only():
    model = make_model("gpt2")
    inducer.attach(model, inducer.LoRAConfig(r=2), name="a")
    inducer.attach(model, inducer.LoRAConfig(r=2, targets=["v"]), name="b")
    inducer.set_adapter(model, ["a", "b"])
    _noise(model)
    inducer.set_adapter(model, "b")
    batch = make_batch("gpt2")
    expected = logits_of(model, batch)
    merged = inducer.merge_and_unload(model)
    assert adapter_state(merged) is None
    torch.testing.assert_close(logits_of(merged, batch), expected, rtol=1e-5, atol=1e-5)


def test_save_hooks_reach_real_models_only(monkeypatch, tmp_path):
    monkeypatch.setattr(listeners, "_LISTENERS", list(listeners.registered()))
    listeners.register(__name__, "record_attach", "record_detach")
    ATTACHED.clear()
    model = make_model("gpt2")
    configs = [inducer.PrefixConfig(length=2), inducer.LoRAConfig(r=2)]
    inducer.count_budget(model, configs)  # a meta twin
    inducer.preset("lora", model, budget="0.5%")  # a meta twin per size tried
    assert ATTACHED == []
    inducer.attach(model, configs)
    assert ATTACHED == [model] and vars(model).get(HOOK_MARK)
    folder = inducer.save_adapter(model, tmp_path / "a")
    fresh = make_model("gpt2")
    inducer.load_adapter(fresh, folder)  # checks on a meta twin first
    assert ATTACHED == [model, fresh] and vars(fresh).get(HOOK_MARK)
    inducer.detach(fresh)
    assert HOOK_MARK not in vars(fresh) and "save_pretrained" not in vars(fresh)


def test_the_core_imports_no_integration():
    code = ("import sys, inducer.runtime.adapter, inducer.io.adapter_format, inducer.runtime.named_adapters, "
            "inducer.sizing.budget\n"
            "from tests.conftest import make_model\n"
            "inducer.runtime.adapter.attach_methods(make_model('bert'), inducer.LoRAConfig(r=2))\n"
            "print(sorted(m for m in sys.modules if m.startswith('inducer.integrations')))")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_one_error_class_and_a_public_task_head():
    from inducer import errors
    from inducer.io import adapter_format
    from inducer.runtime import adapter

    assert inducer.AdapterFormatError is adapter_format.AdapterFormatError is errors.AdapterFormatError
    model = make_model("bert")
    assert task_head_names(model) == ["classifier.weight", "classifier.bias"]
    assert not hasattr(adapter, "_task_head_names")  # serve imports the public name; no private alias
