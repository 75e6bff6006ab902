"""BitFit: the model's own biases, and zero biases added where a model has none (Llama, T5)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import inducer
from inducer.methods.bitfit import AddedBias

from ..conftest import make_batch, make_model


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _with_real_biases(model: nn.Module, adapted: nn.Module) -> nn.Module:
    """A plain reference: ``model`` (the base) with each layer that got an AddedBias rebuilt as an
    nn.Linear holding that bias."""
    reference = copy.deepcopy(model)
    for name, module in adapted.named_modules():
        if isinstance(module, AddedBias):
            layer_name = name.rpartition(".")[0]
            parent_name, _, child = layer_name.rpartition(".")
            old = reference.get_submodule(layer_name)
            new = nn.Linear(old.in_features, old.out_features, bias=True, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(module.bias)
            setattr(reference.get_submodule(parent_name), child, new)
    return reference


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_bias_free_models_get_zero_biases_that_act_like_real_ones(family):
    base = make_model(family).double()
    batch = make_batch(family)
    expected = _logits(base, batch)
    model = inducer.attach(copy.deepcopy(base), inducer.BitFitConfig(), train_head=False)
    added = [n for n, m in model.named_modules() if isinstance(m, AddedBias)]
    linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
    head = {n for n, m in base.named_modules() if m is base.get_output_embeddings()}
    # Every linear layer of the backbone, and not the output head.
    assert sorted(n.rpartition(".")[0] for n in added) == sorted(set(linears) - head)
    torch.testing.assert_close(_logits(model, batch), expected, rtol=0, atol=0)  # zero at the start
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    torch.testing.assert_close(_logits(model, batch), _logits(_with_real_biases(base, model), batch))
    assert inducer.count_parameters(model).unfrozen == 0  # nothing of the base is trained


def test_models_with_biases_train_only_their_own_by_default():
    model = inducer.attach(make_model("bert"), inducer.BitFitConfig(), train_head=False)
    assert not any(isinstance(m, AddedBias) for m in model.modules())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") for n in trainable)


def test_add_biases_true_completes_a_partly_biased_model():
    model = make_model("bert")
    model.bert.encoder.layer[0].attention.self.query.bias = None
    inducer.attach(model, inducer.BitFitConfig(add_biases=True), train_head=False)
    added = [n for n, m in model.named_modules() if isinstance(m, AddedBias)]
    assert added == ["bert.encoder.layer.0.attention.self.query.bitfit"]


def test_add_biases_false_refuses_a_bias_free_model_and_leaves_it_untouched():
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"no bias parameters to train \(add_biases=False\)"):
        inducer.attach(model, inducer.BitFitConfig(add_biases=False))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_added_biases_save_load_and_detach(tmp_path):
    batch = make_batch("llama")
    base = make_model("llama").double()
    expected = _logits(base, batch)
    model = inducer.attach(copy.deepcopy(base), inducer.BitFitConfig())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bitfit.bias"):
                parameter.add_(0.05)
    adapted = _logits(model, batch)
    inducer.save_adapter(model, tmp_path)
    assert torch.equal(_logits(inducer.load_adapter(copy.deepcopy(base), tmp_path), batch), adapted)
    inducer.detach(model)
    assert model.state_dict().keys() == base.state_dict().keys()
    assert torch.equal(_logits(model, batch), expected)


def test_bad_add_biases_is_a_clear_error():
    with pytest.raises(ValueError, match="add_biases must be None, True or False"):
        inducer.BitFitConfig(add_biases="yes")


def test_added_biases_cannot_be_merged_into_the_base_class():
    model = inducer.attach(make_model("llama"), inducer.BitFitConfig())
    with pytest.raises(ValueError, match="BitFit added biases"):
        inducer.merge_and_unload(model)
    assert any(isinstance(m, AddedBias) for m in model.modules())  # left as it was
