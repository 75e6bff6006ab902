"""Seams (inducer.runtime.seams): inducers and prefixes on families whose attention skips the registry.

The sweep (tests/sweep) runs every check on GPT-Neo, MPNet and Falcon's default configs; here: a
plain reference for prefix-tuning through GPT-Neo's seam (scores unscaled, causal and local window
on real keys only), Falcon variants the sweep does not build (alibi, the new decoder architecture,
an eager base), the seam's life cycle (install, deepcopy, detach, disabled adapter, refusals), and
the seams' check of themselves at attach against model code that changed (fake changed classes).

Falcon's attention is inline up to transformers 5.24 (reached through the ``sdpa-call`` seam) and
calls the attention registry from 5.25 (no seam: the registry hook reaches it); the Falcon tests
check whichever the installed transformers has, and ``make test-versions`` runs them on both.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import inducer
from inducer.runtime import seams
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


def _falcon_through_seam() -> bool:
    """Whether the installed transformers' Falcon attention is inline (reached through its seam)."""
    return any(seams.seam_for(module) is not None for module in _build("Falcon").modules())


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
    if _falcon_through_seam():  # where Falcon calls sdpa, which the seam catches
        assert model.config._attn_implementation == "sdpa" and seams.installed(model)
    else:  # Falcon calls the registry: inducer's reference path over the eager base, no seam
        reference = inducer.runtime.attention.implementation_name("reference", "eager")
        assert model.config._attn_implementation == reference
        assert not seams.installed(model)
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
    model = _build("Falcon", attn_implementation="eager")
    inducer.attach(model, inducer.PrefixConfig(length=2), train_head=False)
    _perturb(model)
    if _falcon_through_seam():
        with pytest.raises(NotImplementedError, match="output_attentions"):
            _logits(model, _ids(), output_attentions=True)
        return
    # Through the registry the weights come back, over the prefixes and the real keys, and the
    # output is the same as without them.
    with torch.no_grad():
        out = model(input_ids=_ids(), output_attentions=True)
    assert all(w is not None and w.shape[-1] == 2 + 11 for w in out.attentions)
    torch.testing.assert_close(out.logits, _logits(model, _ids()))


@pytest.mark.parametrize("name", ["GPT-Neo", "MPNet", "Falcon"])
def test_seam_life_cycle(name):
    model = _build(name)
    base = copy.deepcopy(model)
    classes = {n: type(m) for n, m in model.named_modules()}
    ids = _ids()
    through_seam = name != "Falcon" or _falcon_through_seam()
    inducer.attach(model, inducer.PrefixConfig(length=2), train_head=False)
    seamed = [n for n, m in model.named_modules() if type(m) is not classes.get(n, type(m))]
    assert all(type(model.get_submodule(n)).__name__ == classes[n].__name__ for n in seamed)
    assert bool(seamed) == through_seam
    _perturb(model)
    adapted = _logits(model, ids)
    assert not torch.allclose(adapted, _logits(base, ids), atol=1e-4)
    # A copy keeps its seams (the class travels with it), so it computes the same.
    assert torch.equal(_logits(copy.deepcopy(model), ids), adapted)
    # The path round-trips (seam-only models report the reference path they use).
    path = inducer.attention_path(model)
    assert path == "reference" if through_seam else path == "fused"
    inducer.set_attention_path(model, path)
    assert inducer.attention_path(model) == path
    before = dict(inducer.runtime.attention.current_implementations(model))
    inducer.set_attention_path(model, "fused")
    if through_seam:  # the seam modules keep the reference path; the fused one changes nothing there
        assert inducer.runtime.attention.current_implementations(model) == before
        assert torch.equal(_logits(model, ids), adapted)
    else:  # registry modules switch paths, with the same results up to rounding
        inducer.set_attention_path(model, "reference")
        assert inducer.attention_path(model) == "reference"
        torch.testing.assert_close(_logits(model, ids), adapted, rtol=1e-4, atol=1e-4)
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


# --- The seams check themselves at attach (inducer.runtime.seams.refusals) --------------------------------
# Fake "changed" model classes: subclasses with the same name (so the family record applies), as a
# new transformers release would ship them.


def _swap(model, class_name: str, make) -> None:
    for module in model.modules():
        if type(module).__name__ == class_name:
            module.__class__ = make(type(module))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: type(m) for n, m in model.named_modules()},
            dict(inducer.runtime.attention.current_implementations(model)),
            {n: p.requires_grad for n, p in model.named_parameters()})


def _assert_unchanged(model, snapshot) -> None:
    state, classes, implementations, trainable = snapshot
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert inducer.runtime.attention.current_implementations(model) == implementations
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable
    assert not hasattr(model, "_inducer_state")


def _reordered_mpnet(cls):
    def forward(self, hidden_states, position_bias=None, attention_mask=None, output_attentions=False, **kw):
        return cls.forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kw)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})


def _renamed_gpt_neo(cls):
    return type(cls.__name__, (cls,), {"_attention": cls._attn, "_attn": None, "__module__": cls.__module__})


def _scaled_gpt_neo(cls):
    def _attn(self, query, key, value, attention_mask=None, *args, **kwargs):  # now scales its scores
        return cls._attn(self, query * query.shape[-1] ** -0.5, key, value, attention_mask, *args, **kwargs)
    return type(cls.__name__, (cls,), {"_attn": _attn, "__module__": cls.__module__})


def _inline_falcon(expand_early: bool):
    """Falcon's multi-query attention written inline (as up to transformers 5.24); with
    ``expand_early`` its single key/value head is repeated per query head before attending."""
    from transformers.models.falcon import modeling_falcon

    def make(cls):
        def forward(self, hidden_states, attention_mask=None, position_ids=None, layer_past=None,
                    use_cache=False, output_attentions=False, position_embeddings=None, **kwargs):
            batch, length, _ = hidden_states.shape
            fused = self.query_key_value(hidden_states).view(batch, length, self.num_heads + 2, self.head_dim)
            parts = fused[..., :-2, :], fused[..., [-2], :], fused[..., [-1], :]
            q, k, v = (x.transpose(1, 2) for x in parts)
            if position_embeddings is not None:
                q, k = modeling_falcon.apply_rotary_pos_emb(q, k, *position_embeddings)
            if layer_past is not None:
                k, v = layer_past.update(k, v, self.layer_idx)
            if expand_early:  # the change: repeated here, so attention sees one key head per query head
                k, v = (x.expand(batch, self.num_heads, -1, -1) for x in (k, v))
            # As Falcon <= 5.24: one key/value head, which sdpa broadcasts over the query heads.
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, is_causal=attention_mask is None and length > 1)
            return self.dense(out.transpose(1, 2).reshape(batch, length, -1)), None
        return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return make


def test_inline_attention_that_still_fits_its_seam_passes_the_check_and_adapts():
    model = _build("Falcon")
    _swap(model, "FalconAttention", _inline_falcon(expand_early=False))
    base, ids = copy.deepcopy(model), _ids()
    assert not seams.refusals(model)
    inducer.attach(model, inducer.PrefixConfig(length=2), train_head=False)
    assert seams.installed(model)
    next(method for method in METHODS if method.name == "prefix")  # the sweep's prefix exists
    _perturb(model)
    assert not torch.allclose(_logits(model, ids), _logits(base, ids), atol=1e-4)
    inducer.detach(model)
    assert torch.equal(_logits(model, ids), _logits(base, ids))


@pytest.mark.parametrize("change", ["kv-expanded-earlier", "method-renamed", "parameters-reordered",
                                    "scores-scaled"])
@pytest.mark.parametrize("config", [inducer.InducerConfig(r_k=2, r_v=2), inducer.PrefixConfig(length=2)],
                         ids=["inducer", "prefix"])
def test_a_seam_whose_model_code_changed_is_refused_at_attach_leaving_the_model_as_it_was(change, config):
    name, class_name, make = {
        "kv-expanded-earlier": ("Falcon", "FalconAttention", _inline_falcon(expand_early=True)),
        "method-renamed": ("GPT-Neo", "GPTNeoSelfAttention", _renamed_gpt_neo),
        "parameters-reordered": ("MPNet", "MPNetSelfAttention", _reordered_mpnet),
        "scores-scaled": ("GPT-Neo", "GPTNeoSelfAttention", _scaled_gpt_neo),
    }[change]
    model = _build(name)
    _swap(model, class_name, make)
    snapshot = _snapshot(model)
    with pytest.raises(inducer.UnsupportedModelError) as refusal:
        inducer.attach(model, config, train_head=False)
    message = str(refusal.value)
    assert "\n" not in message and class_name in message
    assert f"transformers {transformers.__version__}" in message and "use LoRA" in message
    why = {"kv-expanded-earlier": "keys reach attention with 4 heads where the seam's facts say 1",
           "method-renamed": "has no method _attn",
           "parameters-reordered": "forward takes (hidden_states, position_bias, attention_mask",
           "scores-scaled": "_attn computes attention differently from the seam"}[change]
    assert why in message
    _assert_unchanged(model, snapshot)
    # Methods that do not need the seam still adapt the changed model.
    inducer.attach(model, inducer.LoRAConfig(r=2), train_head=False)
    assert not seams.installed(model)
    inducer.detach(model)
    _assert_unchanged(model, snapshot)
