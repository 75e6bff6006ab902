"""Adapters saved in format 2 by the inducer before adapters were keyed by name load to the same logits.

The folders under ``tests/fixtures/adapters_v2/`` were written once by ``tests/write_adapter_fixtures.py``
(its docstring says how); format-1 folders are ``tests/fixtures/adapters`` (``tests/methods/
test_saved_adapters.py``). Each case is loaded into a fresh base, every adapter under its saved name,
and must give the recorded logits with each adapter active and, for two adapters, routed row by row.
Saving a loaded adapter again must write the same tensor names and values: the on-disk names did not move.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import inducer
from inducer.io.adapter_format import weights_path
from inducer.methods import METHOD_CONFIGS
from tests.conftest import make_model

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "adapters_v2"
MANIFEST = json.loads((ROOT / "manifest.json").read_text())


def load_case(name: str, inference: bool = False) -> tuple[torch.nn.Module, dict]:
    """A fresh base of the case's family with every adapter of the case loaded under its name."""
    case = MANIFEST[name]
    model = make_model(case["family"])
    for adapter in case["adapters"]:
        inducer.load_adapter(model, ROOT / name / adapter, name=adapter, inference=inference)
    # The modules attach adds start in training mode even on an eval model (LoRA-q's dropout 0.1).
    return model.eval(), case


def expected_of(name: str) -> tuple[dict, dict]:
    """(the batch, the recorded logits by key) of a case."""
    saved = load_file(str(ROOT / name / "expected.safetensors"))
    batch = {k: v for k, v in saved.items() if not k.startswith("logits.")}
    return batch, {k: v for k, v in saved.items() if k.startswith("logits.")}


def configs_of(name: str) -> list[dict]:
    """The saved ``adapter_config.json`` of every adapter of a case."""
    adapters = MANIFEST[name]["adapters"]
    return [json.loads((ROOT / name / a / "adapter_config.json").read_text()) for a in adapters]


def test_fixtures_are_format_2_and_small():
    configs = list(ROOT.glob("*/*/adapter_config.json"))
    assert len(configs) == sum(len(case["adapters"]) for case in MANIFEST.values())
    assert {json.loads(p.read_text())["format_version"] for p in configs} == {2}
    assert sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file()) < 300_000


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_saved_adapters_load_to_their_logits(name: str):
    model, case = load_case(name)
    batch, logits = expected_of(name)
    assert inducer.adapters(model) == case["adapters"]
    with torch.no_grad():
        base = make_model(case["family"])(**batch).logits
        for adapter in case["adapters"]:
            inducer.set_adapter(model, adapter)
            assert not torch.allclose(base, logits[f"logits.{adapter}"], atol=1e-3)  # the adapter acts
            torch.testing.assert_close(model(**batch).logits, logits[f"logits.{adapter}"], rtol=0, atol=1e-6)
        if case["routes"]:
            with inducer.route(model, case["routes"]):
                torch.testing.assert_close(model(**batch).logits, logits["logits.routed"], rtol=0, atol=1e-6)
        if not any(config["head_tensors"] or config["base_tensors"] for config in configs_of(name)):
            with inducer.disable_adapter(model):  # the base's own tensors untouched: exactly the base
                assert torch.equal(model(**batch).logits, base)


@pytest.mark.parametrize("name", sorted(n for n, case in MANIFEST.items()
                                        if any("prefix" in m or "mam" in m for ms in case["methods"].values()
                                               for m in ms)))
def test_saved_prefix_adapters_load_folded_to_their_logits(name: str):
    model, case = load_case(name, inference=True)
    batch, logits = expected_of(name)
    with torch.no_grad():
        for adapter in case["adapters"]:
            inducer.set_adapter(model, adapter)
            # The folded MLP computes the same prefixes in another order: equal up to rounding.
            torch.testing.assert_close(model(**batch).logits, logits[f"logits.{adapter}"],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_resaving_a_loaded_adapter_writes_the_same_tensors(name: str, tmp_path: Path):
    model, case = load_case(name)
    for adapter in case["adapters"]:
        folder = ROOT / name / adapter
        inducer.set_adapter(model, adapter)  # its base tensors (BitFit's biases, the head) count as trained
        again = inducer.save_adapter(model, tmp_path / adapter, name=adapter)
        old, new = load_file(str(weights_path(folder))), load_file(str(weights_path(again)))
        assert sorted(new) == sorted(old)
        assert all(torch.equal(new[k], old[k]) for k in old)
        old_config = json.loads((folder / "adapter_config.json").read_text())
        new_config = json.loads((again / "adapter_config.json").read_text())
        for key in ("train_head", "head_tensors", "base_tensors", "inference_tensors", "base_model"):
            assert new_config[key] == old_config[key], key
        # Method configs: the same configs, and every field written then is written again with its
        # value; fields added since (InducerConfig.b_lr_ratio) appear at the value that reads the same.
        assert len(new_config["methods"]) == len(old_config["methods"])
        for old_method, new_method in zip(old_config["methods"], new_config["methods"], strict=True):
            assert {k: new_method.get(k) for k in old_method} == old_method
            cls = METHOD_CONFIGS[old_method["method"]]
            assert cls.from_dict(new_method) == cls.from_dict(old_method)
