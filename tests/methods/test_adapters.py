"""Bottleneck adapters against hand-written sub-layer computations."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.methods.adapters import BottleneckAdapter

from ..conftest import make_model


def _randomise(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _adapter(x, adapter):
    h = adapter.norm(x) if adapter.norm is not None else x
    return adapter.scale * (torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
                            + adapter.up.bias)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_pfeiffer_adds_adapter_of_the_ffn_output(layer_norm):
    model = make_model("gpt2").double()
    mlp = model.transformer.h[1].mlp
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    plain = mlp(x)
    inducer.attach(model, inducer.AdapterConfig(kind="pfeiffer", bottleneck=5, layer_norm=layer_norm))
    _randomise(model)
    adapter = model.transformer.h[1].adapter_ffn
    torch.testing.assert_close(mlp(x), plain + _adapter(plain, adapter))


def test_parallel_adds_scaled_adapter_of_the_ffn_input():
    model = make_model("bert").double()
    layer = model.bert.encoder.layer[0]
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    plain = layer.output.dense(layer.intermediate(x))
    inducer.attach(model, inducer.AdapterConfig(kind="parallel", bottleneck=5, scale=4.0))
    _randomise(model)
    adapter = layer.adapter_ffn
    assert adapter.scale == 4.0
    # BERT's FFN starts at `intermediate` (input x) and ends at `output.dense` (before dropout + LN).
    torch.testing.assert_close(layer.output.dense(layer.intermediate(x)), plain + _adapter(x, adapter))


def test_houlsby_adapts_attention_output_and_ffn_of_every_layer():
    model = inducer.attach(make_model("bart"), inducer.AdapterConfig(kind="houlsby", bottleneck=4))
    names = sorted(n for n, m in model.named_modules() if isinstance(m, BottleneckAdapter))
    attn = [n for n in names if n.endswith("adapter_attn")]
    ffn = [n for n in names if n.endswith("adapter_ffn")]
    assert len(attn) == 6 and len(ffn) == 4  # enc self x2, dec self x2, cross x2; 4 FFNs
    x = torch.randn(1, 3, 32)
    proj = model.model.encoder.layers[0].self_attn.out_proj
    adapter = model.model.encoder.layers[0].self_attn.adapter_attn
    with torch.no_grad():
        adapter.up.weight.normal_()
        plain = torch.nn.functional.linear(x, proj.weight, proj.bias)
        torch.testing.assert_close(proj(x), plain + _adapter(plain, adapter))


def test_parallel_attention_placement_reads_the_attention_input():
    model = make_model("llama").double()
    inducer.attach(model, inducer.AdapterConfig(kind="parallel", placement="attn", bottleneck=3))
    _randomise(model)
    layer = model.model.layers[0]
    x = torch.randn(1, 4, 48, dtype=torch.float64)
    position_ids = torch.arange(4)[None]
    cos_sin = model.model.rotary_emb(x, position_ids)
    out = layer.self_attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=None)[0]
    inducer.detach(model)
    plain = layer.self_attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=None)[0]
    adapter_out = out - plain
    assert adapter_out.abs().max() > 1e-3
    model2 = make_model("llama").double()
    inducer.attach(model2, inducer.AdapterConfig(kind="parallel", placement="attn", bottleneck=3))
    _randomise(model2)
    torch.testing.assert_close(adapter_out, _adapter(x, model2.model.layers[0].self_attn.adapter_attn))


def test_bert_init_is_not_zero_and_lora_init_is():
    lora = BottleneckAdapter(8, 2, 1.0, "lora", False, "relu")
    bert = BottleneckAdapter(8, 2, 1.0, "bert", False, "relu")
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), torch.zeros(3, 8))
    assert bert(x).abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [(dict(kind="serial"), "kind"), (dict(bottleneck=0), "bottleneck"), (dict(scale=0), "scale"),
     (dict(placement="mlp"), "placement"), (dict(init="xavier"), "init"),
     (dict(non_linearity="elu"), "non_linearity"), (dict(layer_norm=1), "layer_norm")],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"AdapterConfig.{field}"):
        inducer.AdapterConfig(**kwargs)
