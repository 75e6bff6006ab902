"""Several named adapters on one base: attach / load next to each other, switch, disable, delete, save."""

from __future__ import annotations

import pytest
import torch

import inducer

from ..conftest import logits_of, make_batch, make_model


def _randomise(model, seed: int = 3) -> None:
    """Sizeable values in every added tensor, so each adapter changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("inducer", "lora", "prefix", "adapter_")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _two_adapters(family: str = "gpt2"):
    model = make_model(family).double()
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=3), name="sst2")
    inducer.attach(model, [inducer.InducerConfig(r_k=1, r_v=2), inducer.LoRAConfig(r=2)], name="mnli")
    _randomise(model)
    return model


def _alone(configs, family: str = "gpt2"):
    """The same adapter (same tensors as in ``_two_adapters``) alone on a fresh base."""
    model = make_model(family).double()
    inducer.attach(model, configs)
    return model


def test_names_default_and_listing():
    model = make_model("gpt2")
    assert inducer.adapters(model) == []
    inducer.attach(model, inducer.InducerConfig())
    assert inducer.adapters(model) == ["default"]
    inducer.attach(model, inducer.LoRAConfig(), name="mnli")
    assert inducer.adapters(model) == ["default", "mnli"]
    assert inducer.active_adapters(model) == ["default"]
    # The default adapter keeps the single-adapter module names; others carry their name.
    assert hasattr(model.transformer.h[0].attn, "inducer")
    assert hasattr(model.transformer.h[0].attn.c_attn, "lora_q__mnli")


def test_second_adapter_is_inactive_and_frozen_until_set():
    model = _two_adapters()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("__sst2" in n for n in trainable)
    inducer.set_adapter(model, "mnli")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("__mnli" in n for n in trainable)
    counts = inducer.count_parameters(model)
    assert counts.added == sum(counts.adapters.values())
    assert counts.trainable == counts.adapters["mnli"] == inducer.count_parameters(model, "mnli").added
    assert inducer.count_parameters(model, "sst2").trainable == 0


def test_each_active_adapter_equals_it_alone_and_disable_is_the_base():
    model = _two_adapters()
    batch = make_batch("gpt2")
    base = logits_of(make_model("gpt2").double(), batch)
    for name, configs in (("sst2", inducer.InducerConfig(r_k=2, r_v=3)),
                          ("mnli", [inducer.InducerConfig(r_k=1, r_v=2), inducer.LoRAConfig(r=2)])):
        inducer.set_adapter(model, name)
        alone = _alone(configs)
        alone.load_state_dict({k.replace(f"__{name}", ""): v for k, v in model.state_dict().items()
                               if f"__{name}" in k or "__" not in k.rpartition(".")[0]}, strict=False)
        torch.testing.assert_close(logits_of(model, batch), logits_of(alone, batch))
    with inducer.disable_adapter(model):
        assert torch.equal(logits_of(model, batch), base)
    assert not torch.allclose(logits_of(model, batch), base)


def test_several_active_adapters_compose():
    model = make_model("gpt2").double()
    inducer.attach(model, inducer.LoRAConfig(r=2), name="a")
    inducer.attach(model, inducer.LoRAConfig(r=2, targets=["o"]), name="b")
    _randomise(model)
    both = make_model("gpt2").double()
    inducer.attach(both, [inducer.LoRAConfig(r=2), inducer.LoRAConfig(r=2, targets=["o"])])
    both.load_state_dict({k.replace("__a", "").replace("__b", ""): v for k, v in model.state_dict().items()})
    inducer.set_adapter(model, ["a", "b"])
    batch = make_batch("gpt2")
    torch.testing.assert_close(logits_of(model, batch), logits_of(both, batch))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora" in n}


def test_delete_leaves_the_others_bit_identical():
    model = _two_adapters()
    batch = make_batch("gpt2")
    before = logits_of(model, batch)
    inducer.delete_adapter(model, "mnli")
    assert inducer.adapters(model) == ["sst2"]
    assert not any("mnli" in n for n, _ in model.named_modules())
    assert torch.equal(logits_of(model, batch), before)
    inducer.delete_adapter(model, "sst2")  # the last one: the model is its base again
    assert not hasattr(model, "_inducer_state")
    assert torch.equal(logits_of(model, batch), logits_of(make_model("gpt2").double(), batch))


def test_save_and_load_each_named_adapter(tmp_path):
    model = _two_adapters()
    batch = make_batch("gpt2")
    for name in ("sst2", "mnli"):
        inducer.set_adapter(model, name)
        expected = logits_of(model, batch)
        inducer.save_adapter(model, tmp_path / name, name=name)
        # The folder is a plain single adapter: a fresh base loads it as "default".
        fresh = inducer.load_adapter(make_model("gpt2").double(), tmp_path / name)
        torch.testing.assert_close(logits_of(fresh, batch), expected)
        inducer.load_adapter(model, tmp_path / name, name=f"{name}-copy")
        inducer.set_adapter(model, f"{name}-copy")
        torch.testing.assert_close(logits_of(model, batch), expected)
    assert inducer.adapters(model) == ["sst2", "mnli", "sst2-copy", "mnli-copy"]
    with pytest.raises(ValueError, match="pass name="):
        inducer.save_adapter(model, tmp_path / "which")


def test_refused_load_leaves_the_model_and_its_adapters_as_they_were(tmp_path):
    model = _two_adapters()
    inducer.save_adapter(model, tmp_path / "other", name="sst2")
    wrong = make_model("llama").double()
    inducer.attach(wrong, inducer.InducerConfig())
    inducer.save_adapter(wrong, tmp_path / "llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(inducer.AdapterFormatError, match="different base model"):
        inducer.load_adapter(model, tmp_path / "llama", name="qa")
    assert inducer.adapters(model) == ["sst2", "mnli"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_errors_name_the_problem(tmp_path):
    model = _two_adapters()
    inducer.save_adapter(model, tmp_path, name="sst2")
    with pytest.raises(ValueError, match="already adapted with an adapter named 'sst2'"):
        inducer.attach(model, inducer.InducerConfig(), name="sst2")
    with pytest.raises(ValueError, match="letters, digits"):
        inducer.attach(model, inducer.InducerConfig(), name="a.b")
    with pytest.raises(ValueError, match="no adapter named 'qa'"):
        inducer.set_adapter(model, "qa")
    with pytest.raises(ValueError, match="no adapter named 'qa'"):
        inducer.delete_adapter(model, "qa")
    with pytest.raises(ValueError, match="share its base"):
        inducer.merge(model)
    with pytest.raises(ValueError, match="has no adapter"):
        inducer.set_adapter(make_model("gpt2"), "x")
    with pytest.raises(ValueError, match="already adapted"):
        inducer.load_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="already has an adapter named 'mnli'"):
        inducer.load_adapter(model, tmp_path, name="mnli")


def test_bitfit_cannot_share_the_base():
    model = inducer.attach(make_model("bert"), inducer.InducerConfig())
    with pytest.raises(ValueError, match="trains base parameters"):
        inducer.attach(model, inducer.BitFitConfig(), name="bias")
    assert inducer.adapters(model) == ["default"]
    bitfit = inducer.attach(make_model("bert"), inducer.BitFitConfig())
    with pytest.raises(ValueError, match="trains base parameters"):
        inducer.attach(bitfit, inducer.InducerConfig(), name="other")


def test_failed_attach_leaves_other_adapters_untouched():
    model = _two_adapters()
    batch = make_batch("gpt2")
    before = logits_of(model, batch)
    with pytest.raises(ValueError):
        inducer.attach(model, inducer.LoRAConfig(targets=["no_such_layer*"]), name="bad")
    assert inducer.adapters(model) == ["sst2", "mnli"]
    assert torch.equal(logits_of(model, batch), before)
