"""Seams (inducer.seams): inducers and prefixes on families whose attention skips the registry.

The sweep (tests/sweep) runs every check on GPT-Neo, MPNet and Falcon's default configs; here: a
plain reference for prefix-tuning through GPT-Neo's seam (scores unscaled, causal and local window
on real keys only), Falcon variants the sweep does not build (alibi, the new decoder architecture,
an eager base), and the seam's life cycle (install, deepcopy, detach, disabled adapter, refusals).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import inducer
from inducer import seams
from tests.sweep.architectures import ARCHITECTURES, Architecture
from tests.sweep.checks import METHODS, sweep_architecture

_BY_NAME = {arch.name: arch for arch in ARCHITECTURES}


def _build(name: str, **overrides):
    arch = _BY_NAME[name]
    return Architecture(arch.name, arch.model_type, arch.kind, {**arch.config, **overrides}).build()


def _ids(length: int = 11) -> torch.Tensor:
    return torch.randint(3, 90, (2, length), generator=torch.Generator().manual_seed(3))


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def _perturb(model) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))


def _gpt_neo_prefixed_attention(module, hidden: torch.Tensor, key_prefix, value_prefix) -> torch.Tensor:
    """GPT-Neo self-attention with prefixes, written out: no scaling, the layer's causal (or local
    window) pattern on the real keys, prefixes seen by every query."""
    batch, length, _ = hidden.shape
    heads, dim = module.num_heads, module.head_dim

    def split(x):
        return x.view(batch, length, heads, dim).transpose(1, 2)

    q, k, v = split(module.q_proj(hidden)), split(module.k_proj(hidden)), split(module.v_proj(hidden))
    k = torch.cat([key_prefix.expand(batch, -1, -1, -1), k], dim=2)
    v = torch.cat([value_prefix.expand(batch, -1, -1, -1), v], dim=2)
    scores = q @ k.transpose(-1, -2)
    allowed = module.bias[0, 0, :length, :length]
    allowed = torch.cat([torch.ones(length, key_prefix.shape[1], dtype=torch.bool), allowed], dim=1)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(batch, length, heads * dim)
    return module.out_proj(out)


@pytest.mark.parametrize("layer", [0, 1])  # GPT-Neo's sweep config: layer 0 global, layer 1 local
def test_gpt_neo_prefix_matches_a_plain_reference(layer):
    model = _build("GPT-Neo")
    inducer.attach(model, inducer.PrefixConfig(length=3, reparam_hidden=None, init_std=0.5), train_head=False)
    module = model.transformer.h[layer].attn.attention
    assert type(module).__name__ == "GPTNeoSelfAttention" and seams.installed(model)
    hidden = torch.randn(2, 11, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    key_prefix, value_prefix = module.prefix.key_value()
    with torch.no_grad():
        got = module(hidden)[0]
        expected = _gpt_neo_prefixed_attention(module, hidden, key_prefix, value_prefix)
    with torch.no_grad(), inducer.disable_adapter(model):
        base = module(hidden)[0]  # the model's own code
    assert (got - base).abs().max() > 0.05 * base.abs().max()  # the prefixes act
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(alibi=True),
    dict(new_decoder_architecture=True, num_kv_heads=2),
    dict(multi_query=False),
], ids=["alibi", "new-decoder-architecture", "multi-head"])
def test_falcon_variants_pass_every_sweep_check(overrides):
    arch = _BY_NAME["Falcon"]
    variant = Architecture(f"Falcon {overrides}", arch.model_type, arch.kind, {**arch.config, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = sweep_architecture(variant)
    assert {name: (o.status, o.reason) for name, o in outcomes.items() if o.status != "pass"} == {}


def test_falcon_on_eager_runs_its_sdpa_branch_while_attached():
    arch = _BY_NAME["Falcon"]
    config = AutoConfig.for_model(arch.model_type, **arch.config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    base = copy.deepcopy(model)
    ids = _ids()
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=2), train_head=False)
    assert model.config._attn_implementation == "sdpa"  # where Falcon calls sdpa, which the seam catches
    _perturb(model)
    adapted = _logits(model, ids)
    assert not torch.allclose(adapted, _logits(base, ids), atol=1e-4)
    # A zero value path is the base: the seam reproduces Falcon's own attention.
    next(method for method in METHODS if method.name == "inducer").zero(model)
    torch.testing.assert_close(_logits(model, ids), _logits(base, ids), rtol=1e-5, atol=1e-5)
    with inducer.disable_adapter(model):
        assert model.config._attn_implementation == "eager"
        assert torch.equal(_logits(model, ids), _logits(base, ids))
    inducer.detach(model)
    assert model.config._attn_implementation == "eager" and not seams.installed(model)
    assert torch.equal(_logits(model, ids), _logits(base, ids))


def test_falcon_output_attentions_is_refused_not_ignored():
    model = _build("Falcon")
    inducer.attach(model, inducer.PrefixConfig(length=2), train_head=False)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        _logits(model, _ids(), output_attentions=True)


@pytest.mark.parametrize("name", ["GPT-Neo", "MPNet", "Falcon"])
def test_seam_life_cycle(name):
    model = _build(name)
    base = copy.deepcopy(model)
    classes = {n: type(m) for n, m in model.named_modules()}
    ids = _ids()
    inducer.attach(model, inducer.PrefixConfig(length=2), train_head=False)
    seamed = [n for n, m in model.named_modules() if type(m) is not classes.get(n, type(m))]
    assert seamed and all(type(model.get_submodule(n)).__name__ == classes[n].__name__ for n in seamed)
    adapted = _logits(model, ids)
    # A copy keeps its seams (the class travels with it), so it computes the same.
    assert torch.equal(_logits(copy.deepcopy(model), ids), adapted)
    # The seam modules keep the reference path; asking for the fused one changes nothing there.
    before = dict(inducer.attention.current_implementations(model))
    inducer.set_attention_path(model, "fused")
    assert inducer.attention.current_implementations(model) == before
    assert torch.equal(_logits(model, ids), adapted)
    inducer.detach(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert model.state_dict().keys() == base.state_dict().keys()
    assert torch.equal(_logits(model, ids), _logits(base, ids))


@pytest.mark.parametrize("name", ["DeBERTa-v2", "RoFormer", "Bloom"])
def test_families_without_a_seam_are_refused_at_attach_naming_the_class(name):
    model = _build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refusal = r"Attention does not call transformers' attention registry"
    with pytest.raises(inducer.UnsupportedModelError, match=refusal):
        inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=2), train_head=False)
    assert not seams.installed(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
