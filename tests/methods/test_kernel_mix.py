"""Kernel-mix against the dense per-head block updates it stands for."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.methods.kernel_mix import PerHeadLowRank

from ..conftest import make_model


def _randomise(model):
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PerHeadLowRank):
                m.b.copy_(torch.randn(m.b.shape, generator=g, dtype=m.b.dtype) * 0.3)


def test_query_update_is_block_per_head_and_output_update_per_input_head():
    model = make_model("bert").double()
    attention = model.bert.encoder.layer[0].attention
    q_layer, o_layer = attention.self.query, attention.output.dense
    q_weight, o_weight = q_layer.weight.detach().clone(), o_layer.weight.detach().clone()
    inducer.attach(model, inducer.KernelMixConfig(r=2, alpha=4))
    _randomise(model)
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    mix_q, mix_o = q_layer.kernel_mix, o_layer.kernel_mix
    # Dense form: head h's 8 output rows of W_q get (a_h b_h)^T * alpha/r.
    dense_q = q_weight.clone()
    for h in range(4):
        dense_q[8 * h : 8 * h + 8] += 2.0 * (mix_q.a[h] @ mix_q.b[h]).T
    torch.testing.assert_close(q_layer(x), x @ dense_q.T + q_layer.bias)
    # Head h's 8 input columns of W_o get (a_h b_h)^T * alpha/r.
    dense_o = o_weight.clone()
    for h in range(4):
        dense_o[:, 8 * h : 8 * h + 8] += 2.0 * (mix_o.a[h] @ mix_o.b[h]).T
    torch.testing.assert_close(o_layer(x), x @ dense_o.T + o_layer.bias)


def test_grouped_query_value_uses_key_value_heads():
    model = inducer.attach(make_model("llama"), inducer.KernelMixConfig(r=2))
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.kernel_mix.a.shape == (6, 48, 2)
    assert attention.v_proj.kernel_mix.b.shape == (2, 2, 8)  # 2 key/value heads of dim 8
    assert attention.o_proj.kernel_mix.a.shape == (6, 8, 2)


@pytest.mark.parametrize(("kwargs", "field"), [(dict(r=0), "r"), (dict(targets=["k"]), "targets"),
                                               (dict(alpha=-1), "alpha")])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"KernelMixConfig.{field}"):
        inducer.KernelMixConfig(**kwargs)
