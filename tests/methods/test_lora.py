"""LoRA against the dense weight update it stands for, merge/unmerge, roles and validation."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.methods.lora import LoRAModule

from ..conftest import logits_of, make_batch, make_model


def _randomise(model, scale=0.2):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRAModule):
                m.b.copy_(torch.randn(m.b.shape, generator=g, dtype=m.b.dtype) * scale)


def test_hook_equals_dense_update_of_the_weight():
    """W x + scale * (x a) b, computed from a dense copy of the updated weight matrix."""
    model = make_model("llama").double()
    layer = model.model.layers[0].self_attn.q_proj
    original = layer.weight.detach().clone()
    inducer.attach(model, inducer.LoRAConfig(r=3, alpha=6, targets=["q"]))
    _randomise(model)
    lora = layer.lora
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    dense = original + 2.0 * (lora.a @ lora.b).T  # alpha / r = 2
    torch.testing.assert_close(layer(x), x @ dense.T)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_merge_equals_unmerged_and_unmerge_restores(family):
    model = make_model(family).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_batch(family)
    inducer.attach(model, inducer.LoRAConfig(r=2, targets=["q", "v", "o", "ffn_in", "ffn_out"]))
    _randomise(model)
    unmerged = logits_of(model, batch)
    inducer.merge(model)
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())
    torch.testing.assert_close(logits_of(model, batch), unmerged)
    inducer.unmerge(model)
    torch.testing.assert_close(logits_of(model, batch), unmerged)
    inducer.merge(model)
    inducer.detach(model)  # unmerges first
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-12)


def test_gpt2_query_role_adapts_only_the_query_third_of_c_attn():
    model = make_model("gpt2").double()
    attn = model.transformer.h[0].attn
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    base = attn.c_attn(x)
    inducer.attach(model, inducer.LoRAConfig(r=2, targets=["q"]))
    _randomise(model)
    assert hasattr(attn.c_attn, "lora_q") and attn.c_attn.lora_q.b.shape == (2, 32)
    adapted = attn.c_attn(x)
    assert not torch.allclose(adapted[..., :32], base[..., :32])
    assert torch.equal(adapted[..., 32:], base[..., 32:])


def test_name_patterns_layers_and_cross_attention_selection():
    model = inducer.attach(make_model("bart"), inducer.LoRAConfig(targets=["*.fc1"], layers=[0]))
    names = sorted(n for n, m in model.named_modules() if isinstance(m, LoRAModule))
    assert names == ["model.decoder.layers.0.fc1.lora", "model.encoder.layers.0.fc1.lora"]
    model = inducer.attach(make_model("bart"), inducer.LoRAConfig(targets=["q"], attention="cross"))
    names = sorted(n for n, m in model.named_modules() if isinstance(m, LoRAModule))
    assert names == [f"model.decoder.layers.{i}.encoder_attn.q_proj.lora" for i in (0, 1)]
    with pytest.raises(ValueError, match="matches no linear layer"):
        inducer.attach(make_model("bart"), inducer.LoRAConfig(targets=["*.nothing"]))


def test_inducer_sees_the_lora_updated_query(monkeypatch):
    """The query the inducer receives is the LoRA-updated projection (BERT: no rotary step)."""
    from inducer.methods.inducer_tuning import InducerModule

    model = make_model("bert").double()
    inducer.attach(model, [inducer.InducerConfig(r_k=2, r_v=3), inducer.LoRAConfig(r=2, targets=["q"])])
    _randomise(model)
    attention = model.bert.encoder.layer[0].attention.self
    seen, projected = {}, {}
    compose = InducerModule.compose

    def spy(self, query, *args, **kwargs):
        seen.setdefault(id(self), query)
        return compose(self, query, *args, **kwargs)

    monkeypatch.setattr(InducerModule, "compose", spy)
    attention.query.register_forward_hook(lambda m, i, o: projected.setdefault("q", o))
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    attention(x)
    expected = projected["q"].view(1, 5, 4, 8).transpose(1, 2)
    torch.testing.assert_close(seen[id(attention.inducer)], expected)
    plain = x @ attention.query.weight.T + attention.query.bias
    assert not torch.allclose(expected, plain.view(1, 5, 4, 8).transpose(1, 2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [(dict(r=0), "r"), (dict(alpha=0), "alpha"), (dict(dropout=1.0), "dropout"),
     (dict(targets=[]), "targets"), (dict(targets="q"), "targets"), (dict(attention="x"), "attention")],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"LoRAConfig.{field}"):
        inducer.LoRAConfig(**kwargs)
