"""Hostile and careless adapter folders: everything is validated before the model is touched, and a
refused load leaves the model bit-identical (issue: trustworthy files)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inducer
from inducer.io.adapter_format import weights_path

from ..conftest import make_batch, make_model


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state, copied (to compare bit for bit after a refused load)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_untouched(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert not hasattr(model, "_inducer_state")
    assert model.config._attn_implementation == "sdpa"


def resign(directory: Path, tensors: dict | None = None, **config_edits) -> None:
    """Rewrite an adapter folder as a careful attacker would: new tensors and config edits, with the
    checksum recomputed, so the deeper checks (not the checksum) must refuse it."""
    config_path = directory / "adapter_config.json"
    weights = weights_path(directory)
    config = json.loads(config_path.read_text())
    if tensors is not None:
        save_file(tensors, str(weights), metadata={"format": "inducer"})
    config.update(config_edits)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    renamed = weights.with_name(f"adapter-{digest[:16]}.safetensors")
    weights.rename(renamed)
    config["weights_sha256"], config["weights_file"] = digest, renamed.name
    config_path.write_text(json.dumps(config))


@pytest.fixture
def inducer_adapter(tmp_path):
    model = inducer.attach(make_model("bert"), inducer.InducerConfig(r_k=2, r_v=3))
    return inducer.save_adapter(model, tmp_path / "inducer")


@pytest.fixture
def bitfit_adapter(tmp_path):
    model = inducer.attach(make_model("bert"), inducer.BitFitConfig())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    return inducer.save_adapter(model, tmp_path / "bitfit")


def refuse(directory: Path, match: str, **load_options) -> None:
    model = make_model("bert")
    before = snapshot(model)
    with pytest.raises(inducer.AdapterFormatError, match=match):
        inducer.load_adapter(model, directory, **load_options)
    assert_untouched(model, before)


def test_an_inducer_adapter_cannot_overwrite_base_embeddings(inducer_adapter):
    tensors = load_file(weights_path(inducer_adapter))
    name = "bert.embeddings.word_embeddings.weight"
    tensors[name] = torch.zeros_like(make_model("bert").state_dict()[name])
    resign(inducer_adapter, tensors, base_tensors=[name])
    refuse(inducer_adapter, "may only replace")


def test_a_head_tensor_naming_no_module_is_refused_before_the_head_changes(inducer_adapter):
    tensors = load_file(weights_path(inducer_adapter))
    tensors["nowhere.weight"] = torch.zeros(3)
    config = json.loads((inducer_adapter / "adapter_config.json").read_text())
    resign(inducer_adapter, tensors, head_tensors=config["head_tensors"] + ["nowhere.weight"])
    refuse(inducer_adapter, "may only replace")


def test_a_bitfit_adapter_with_one_bad_shape_changes_no_bias(bitfit_adapter):
    tensors = load_file(weights_path(bitfit_adapter))
    last = sorted(tensors)[-1]
    tensors[last] = torch.zeros(tensors[last].numel() + 1)
    resign(bitfit_adapter, tensors)
    refuse(bitfit_adapter, "shape")


def test_a_bitfit_adapter_loads_its_biases(bitfit_adapter):
    model = inducer.load_adapter(make_model("bert"), bitfit_adapter)
    saved = load_file(weights_path(bitfit_adapter))
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())


@pytest.mark.parametrize("checksum", ["missing", None, "", "0" * 64, 42])
def test_the_checksum_is_mandatory(inducer_adapter, checksum):
    path = inducer_adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    if checksum == "missing":
        config.pop("weights_sha256")
    else:
        config["weights_sha256"] = checksum
    path.write_text(json.dumps(config))
    refuse(inducer_adapter, "weights_sha256|checksum|must be a JSON")


def test_the_checksum_opt_out_loads_a_hand_made_adapter(inducer_adapter):
    path = inducer_adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.pop("weights_sha256")
    path.write_text(json.dumps(config))
    model = inducer.load_adapter(make_model("bert"), inducer_adapter, verify_checksum=False)
    assert inducer.count_parameters(model).added > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int64, torch.bool])
def test_tensors_of_another_dtype_are_refused(inducer_adapter, dtype):
    tensors = {n: t.to(dtype) for n, t in load_file(weights_path(inducer_adapter)).items()}
    resign(inducer_adapter, tensors)
    refuse(inducer_adapter, "dtype|is torch")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused(inducer_adapter, value):
    tensors = load_file(weights_path(inducer_adapter))
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = value
    resign(inducer_adapter, tensors)
    refuse(inducer_adapter, "NaN or infinite")


def test_a_huge_declared_size_is_refused_before_anything_is_allocated(inducer_adapter):
    config = json.loads((inducer_adapter / "adapter_config.json").read_text())
    config["methods"][0]["r_k"] = 10**9  # 4 heads x 8 x 10**9 floats: 128 GB if it were allocated
    resign(inducer_adapter, methods=config["methods"])
    refuse(inducer_adapter, "shape")


def test_a_failed_load_restores_requires_grad():
    model = make_model("bert")
    model.classifier.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(inducer.AdapterFormatError):
        inducer.load_adapter(model, Path("/nonexistent-adapter"))
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------------ fuzz

JSON_EDITS = [
    ("format", "peft"), ("format", None), ("format_version", 0), ("format_version", "1"),
    ("format_version", True), ("format_version", 99), ("methods", []), ("methods", "inducer"),
    ("methods", [None]), ("methods", [{"method": "nope"}]), ("methods", [{"method": "inducer", "r_k": -1}]),
    ("methods", [{"method": "inducer", "r_v": "4"}]), ("methods", [{"method": "inducer", "bogus": 1}]),
    ("methods", [{"method": "lora", "r": 2}]), ("methods", [{"method": "bitfit"}]),
    ("methods", [{"method": "full"}]),
    ("methods", [{"method": "inducer", "r_k": 2, "r_v": 3, "layers": [7]}]),
    ("train_head", "yes"), ("train_head", None), ("head_tensors", "classifier.weight"),
    ("head_tensors", [1, 2]), ("head_tensors", ["classifier.weight", "classifier.weight"]),
    ("head_tensors", []), ("base_tensors", ["bert.pooler.dense.weight"]), ("base_tensors", {}),
    ("inference_tensors", ["ghost"]), ("base_model", {}), ("base_model", None),
    ("base_model", {"architecture": "BertForSequenceClassification"}), ("weights_sha256", "x" * 64),
    ("extra_key", 1), ("library_version", 5),
]


def _fuzz_variants() -> list[tuple[str, object]]:
    variants: list[tuple[str, object]] = [("json", edit) for edit in JSON_EDITS]
    rng = random.Random(1234)
    for _ in range(20):
        variants.append(("flip", (rng.random(), rng.randrange(1, 256))))  # checksum then catches it
    for _ in range(12):
        variants.append(("flip-resigned", (rng.random(), rng.randrange(1, 256))))  # deeper checks must
    variants += [("truncate", 0.5), ("truncate", 0.0), ("config-bytes", b"\xff\xfe"), ("config-bytes", b"[]")]
    return variants


@pytest.mark.parametrize("kind,edit", _fuzz_variants())
def test_fuzzed_adapters_are_refused_or_load_exactly(inducer_adapter, kind, edit):
    """Each altered folder is either refused with AdapterFormatError (model bit-identical) or loads
    exactly what a clean load gives: never a partial load, a changed base tensor, or another error."""
    batch = make_batch("bert")
    clean = inducer.load_adapter(make_model("bert"), inducer_adapter)
    expected = {n: t.clone() for n, t in clean.state_dict().items()}
    config_path, weights = inducer_adapter / "adapter_config.json", weights_path(inducer_adapter)
    if kind == "json":
        key, value = edit
        config = json.loads(config_path.read_text())
        config[key] = value
        config_path.write_text(json.dumps(config))
    elif kind.startswith("flip"):
        position, mask = edit
        data = bytearray(weights.read_bytes())
        data[int(position * (len(data) - 1))] ^= mask
        weights.write_bytes(bytes(data))
        if kind == "flip-resigned":
            resign(inducer_adapter)
    elif kind == "truncate":
        weights.write_bytes(weights.read_bytes()[: int(edit * weights.stat().st_size)])
    else:
        config_path.write_bytes(edit)
    model = make_model("bert")
    before = snapshot(model)
    try:
        inducer.load_adapter(model, inducer_adapter)
    except inducer.AdapterFormatError:
        assert_untouched(model, before)
        return
    loaded = model.state_dict()
    # Loaded: then it must be the clean adapter, up to tensors that a flipped (and re-signed) byte in
    # a value changed, which are finite values of the right shape and dtype; base tensors never change.
    for name, tensor in expected.items():
        if name in before:
            assert torch.equal(loaded[name], before[name]) or name.startswith("classifier."), name
        assert loaded[name].shape == tensor.shape and loaded[name].dtype == tensor.dtype
        assert torch.isfinite(loaded[name]).all()
    model(**batch)
