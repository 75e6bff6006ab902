"""Inducer-tuning against an independent statement of the spec, configs and parameter budgets."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import inducer
from inducer.methods.inducer_tuning import InducerModule

from ..conftest import make_model
from ..runtime.test_adapter import VARIANTS, _randomise


def spec_attention(q, k, v, keep, ind: InducerModule, scaling, proj):
    """The spec written the authors' way: the inducer logit is one more column of the scores and
    a single softmax over M + 1 columns gives lam (last column) and the attention weights.

    q (B, H, N, p); k, v (B, H, M, p) already grouped per query head; keep (B, 1, N, M) bool.
    Returns the output after the projection ``proj`` (with E added when the value is extended).
    """
    c = ind.config
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~keep, float("-inf"))
    if c.use_lambda:
        if c.r_k > 0:
            hidden = torch.tanh(torch.einsum("bhnp,hpr->bhnr", q, ind.key_a) + ind.key_a_bias[:, None])
            virtual_key = q + torch.einsum("bhnr,hrp->bhnp", hidden, ind.key_b) + ind.key_b_bias[:, None]
        else:
            virtual_key = q
        s = scaling * (q * virtual_key).sum(-1, keepdim=True)
        probs = torch.softmax(torch.cat([scores, s], dim=-1), dim=-1)
        lam, real = probs[..., -1], probs[..., :-1]
        attn_prefix_style = real @ v  # = (1 - lam) * Attn
        attn = attn_prefix_style / (1 - lam)[..., None]
    else:
        lam = torch.ones(q.shape[:-1], dtype=q.dtype)
        attn = torch.softmax(scores, -1) @ v
    heads = attn_prefix_style if c.composition == "gated" else attn
    z = torch.tanh(torch.einsum("bhnp,hpr->bhnr", q, ind.value_a) + ind.value_a_bias[:, None])
    if not c.value_extension:
        value = torch.einsum("bhnr,hrp->bhnp", z, ind.value_b) + ind.value_b_bias[:, None]
        heads = heads + lam[..., None] * value
        return proj(heads.transpose(1, 2).flatten(2))
    basis = ind.value_b if not c.shared_value_basis else ind.value_b.expand(q.shape[1], *ind.value_b.shape)
    extended = torch.einsum("bhnr,hrd->bnd", lam[..., None] * z, basis) + ind.value_b_bias
    plain = torch.nn.functional.linear(heads.transpose(1, 2).flatten(2), *_linear_params(proj))
    return plain + extended


def _linear_params(proj):
    if isinstance(proj, torch.nn.Linear):
        return proj.weight, proj.bias
    return proj.weight.t(), proj.bias  # GPT-2 Conv1D stores (in, out)


def _keep_mask(batch, n, causal, pad):
    keep = torch.ones(batch, 1, n, n, dtype=torch.bool)
    if causal:
        keep = keep & torch.ones(n, n, dtype=torch.bool).tril()
    keep[1, ..., n - pad:] = False
    keep[1, :, n - pad:, :] = True  # padded queries see everything (their outputs are unused)
    return keep


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("path", ["fused", "reference"])
def test_gpt2_attention_module_matches_spec(variant, path):
    model = make_model("gpt2").double()
    inducer.attach(model, inducer.InducerConfig(**VARIANTS[variant]))
    _randomise(model)
    inducer.set_attention_path(model, path)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    keep = _keep_mask(2, 7, causal=True, pad=2)
    got = attn(x, attention_mask=keep)[0]
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(2, 7, 4, 8).transpose(1, 2) for t in (q, k, v))
    expected = spec_attention(q, k, v, keep, attn.inducer, 8**-0.5, attn.c_proj)
    real = keep[:, 0].any(-1)[..., None] & torch.ones(2, 7, 32, dtype=torch.bool)
    real[1, 5:] = False
    torch.testing.assert_close(got[real], expected[real])


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_llama_grouped_query_attention_matches_spec(path):
    model = make_model("llama").double()
    inducer.attach(model, inducer.InducerConfig(r_k=3, r_v=2))
    _randomise(model)
    inducer.set_attention_path(model, path)
    layer = model.model.layers[1].self_attn
    assert layer.inducer.key_a.shape == (6, 8, 3)  # 6 query heads (over 2 key/value heads), p = 8
    x = torch.randn(2, 6, 48, dtype=torch.float64)
    position_ids = torch.arange(6)[None].expand(2, 6)
    cos, sin = model.model.rotary_emb(x, position_ids)
    keep = _keep_mask(2, 6, causal=True, pad=1)
    got = layer(x, position_embeddings=(cos, sin), attention_mask=keep)[0]
    q = layer.q_proj(x).view(2, 6, 6, 8).transpose(1, 2)
    k = layer.k_proj(x).view(2, 6, 2, 8).transpose(1, 2)
    v = layer.v_proj(x).view(2, 6, 2, 8).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    # Query head h reads key/value group h // 3.
    k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    expected = spec_attention(q, k, v, keep, layer.inducer, 8**-0.5, layer.o_proj)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1, :5], expected[1, :5])


def test_initialisation_is_near_identity_with_large_lambda():
    model = make_model("gpt2")
    inducer.attach(model, inducer.InducerConfig(r_k=4, r_v=4, init="paper"))
    ind = model.transformer.h[0].attn.inducer
    for p in ind.parameters():
        assert p.abs().max() <= 0.02 + 1e-7  # truncated at 2 std
        assert 0.004 < p.std() < 0.016
    assert ind.key_a.requires_grad and not model.transformer.wte.weight.requires_grad


def test_paper_init_draws_exactly_as_before_the_option():
    """init="paper" (the default) consumes the random stream as the code before ``init`` existed."""
    torch.manual_seed(3)
    model = make_model("gpt2")
    inducer.attach(model, inducer.InducerConfig(r_k=4, r_v=4, init="paper"))
    ind = model.transformer.h[0].attn.inducer
    torch.manual_seed(3)
    make_model("gpt2")
    expected = []
    for shape in [(4, 8, 4), (4, 4), (4, 4, 8), (4, 8), (4, 8, 4), (4, 4), (4, 4, 32), (32,)]:
        tensor = torch.empty(shape)
        torch.nn.init.trunc_normal_(tensor, std=0.01, a=-0.02, b=0.02)
        expected.append(tensor)
    names = ["key_a", "key_a_bias", "key_b", "key_b_bias",
             "value_a", "value_a_bias", "value_b", "value_b_bias"]
    for name, tensor in zip(names, expected, strict=True):
        torch.testing.assert_close(getattr(ind, name).detach(), tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("init", "lora_paths"),
    [("lora", {"key", "value"}), ("lora-value", {"value"}), ("lora-key", {"key"})],
)
@pytest.mark.parametrize("variant", ["extended", "not-extended", "shared"])
def test_lora_style_init_starts_at_the_pretrained_function_with_a_live_b(init, lora_paths, variant):
    """A uniform in +-1/sqrt(p), B and biases zero on the chosen paths: P_k = Q and E = 0 exactly,
    and B's gradient at step 0 is not small (the paper's init makes it ~ |A| ~ 0.01)."""
    extra = {"not-extended": dict(value_extension=False),
             "shared": dict(shared_value_basis=True)}.get(variant, {})
    torch.manual_seed(0)
    model = make_model("gpt2")
    reference = make_model("gpt2")
    reference.load_state_dict(model.state_dict())
    inducer.attach(model, inducer.InducerConfig(r_k=4, r_v=4, init=init, **extra))
    ind = model.transformer.h[0].attn.inducer
    bound = 1 / math.sqrt(ind.head_dim)
    for path in ("key", "value"):
        a, rest = getattr(ind, f"{path}_a"), [getattr(ind, f"{path}_{n}") for n in ("a_bias", "b", "b_bias")]
        if path in lora_paths:
            assert a.abs().max() <= bound and a.std() > bound / 3  # uniform: std = bound / sqrt(3)
            assert all(torch.count_nonzero(t) == 0 for t in rest)
        else:
            assert a.abs().max() <= 0.02 + 1e-7 and all(t.abs().max() <= 0.02 + 1e-7 for t in rest)
    ids = torch.randint(0, 50, (2, 6))
    if "value" in lora_paths:  # E = 0: the model is exactly the pretrained one
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    model(ids).logits.square().mean().backward()
    if "value" in lora_paths:
        assert ind.value_b.grad.abs().max() > 0 and torch.count_nonzero(ind.value_a.grad) == 0


def test_b_lr_ratio_gives_the_b_factors_their_own_rate_and_leaves_the_function():
    """LoRA+-style: key_b, value_b and their biases train at ratio x lr (own AdamW groups, weight decay
    as their kind's); A factors, the head and the model's output are as without the ratio."""
    from inducer.training.config import TrainConfig
    from inducer.training.optimization import build_optimizer

    outputs, groups = [], {}
    for ratio in (1.0, 4.0):
        torch.manual_seed(0)
        model = make_model("gpt2")
        inducer.attach(model, inducer.InducerConfig(r_k=4, r_v=4, b_lr_ratio=ratio))
        outputs.append(model(torch.arange(6)[None]).logits)
        optimizer, _ = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1), total_steps=10)
        ind = model.transformer.h[0].attn.inducer
        groups[ratio] = {name: (next(g for g in optimizer.param_groups if any(p is t for p in g["params"])),
                                t.ndim) for name, t in ind.named_parameters()}
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for name, (group, ndim) in groups[4.0].items():
        assert group["lr"] == pytest.approx(4e-3 if name.startswith(("key_b", "value_b")) else 1e-3), name
        assert group["weight_decay"] == (0.1 if ndim >= 2 else 0.0), name  # the usual no-decay rule
    assert {g["lr"] for g, _ in groups[1.0].values()} == {1e-3}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(r_k=-1), "r_k"),
        (dict(r_v=0), "r_v"),
        (dict(r_k=1.5), "r_k"),
        (dict(r_v="4"), "r_v"),
        (dict(composition="mix"), "composition"),
        (dict(attention="both"), "attention"),
        (dict(layers=[]), "layers"),
        (dict(layers=[-1]), "layers"),
        (dict(init_std=0), "init_std"),
        (dict(init="kaiming"), "init"),
        (dict(b_lr_ratio=0), "b_lr_ratio"),
        (dict(b_lr_ratio=True), "b_lr_ratio"),
        (dict(value_extension=False, shared_value_basis=True), "shared_value_basis"),
        (dict(use_lambda=False, composition="gated"), "composition"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        inducer.InducerConfig(**kwargs)


def test_config_roundtrip_and_unknown_keys():
    config = inducer.InducerConfig(r_k=0, r_v=5, layers=[1], composition="gated")
    assert inducer.InducerConfig.from_dict(config.to_dict()) == config
    assert inducer.InducerConfig().init == "lora"  # the default since issue 27
    saved_before_init = {k: v for k, v in config.to_dict().items() if k not in ("init", "b_lr_ratio")}
    assert inducer.InducerConfig.from_dict(saved_before_init).init == "paper"  # what made it
    with pytest.raises(ValueError, match="unknown InducerConfig fields"):
        inducer.InducerConfig.from_dict({"r_k": 1, "rank": 3})


def _expected_per_layer(H, p, d, r_k, r_v):
    key = 2 * H * p * r_k + H * r_k + H * p
    value = H * p * r_v + H * r_v + H * r_v * d + d
    return key + value


@pytest.mark.parametrize(
    ("family", "r_k", "r_v", "expected"),
    [("roberta-base", 6, 4, 609_696), ("gpt2-small", 10, 15, 2_003_472)],
)
def test_parameter_counts_match_the_authors_configs(family, r_k, r_v, expected):
    """Counts on the real shapes, built on the meta device (no weights, no memory)."""
    with torch.device("meta"):
        if family == "roberta-base":
            model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
        else:
            model = GPT2LMHeadModel(GPT2Config())
    inducer.attach(model, inducer.InducerConfig(r_k=r_k, r_v=r_v))
    counts = inducer.count_parameters(model)
    assert counts.added == expected == 12 * _expected_per_layer(12, 64, 768, r_k, r_v)
    assert math.isclose(counts.added_percent, 100 * expected / counts.base)


def test_tensor_names_and_shapes_follow_the_format():
    model = inducer.attach(make_model("bert"), inducer.InducerConfig(r_k=2, r_v=3))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if ".inducer." in n}
    prefix = "bert.encoder.layer.0.attention.self.inducer."
    assert {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)} == {
        "key_a": (4, 8, 2), "key_a_bias": (4, 2), "key_b": (4, 2, 8), "key_b_bias": (4, 8),
        "value_a": (4, 8, 3), "value_a_bias": (4, 3), "value_b": (4, 3, 32), "value_b_bias": (32,),
    }
    shared = inducer.attach(make_model("bert"), inducer.InducerConfig(r_v=3, shared_value_basis=True))
    assert shared.bert.encoder.layer[0].attention.self.inducer.value_b.shape == (3, 32)
    plain = inducer.attach(make_model("bert"), inducer.InducerConfig(r_v=3, value_extension=False))
    ind = plain.bert.encoder.layer[0].attention.self.inducer
    assert ind.value_b.shape == (4, 3, 8) and ind.value_b_bias.shape == (4, 8)
    no_key = inducer.attach(make_model("bert"), inducer.InducerConfig(r_k=0))
    assert not hasattr(no_key.bert.encoder.layer[0].attention.self.inducer, "key_a")


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_recorded_lambda_matches_the_spec(path):
    """``record_lam``: lam (B, H, N) of the last forward, = the last column of the spec's softmax."""
    model = make_model("gpt2").double()
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=3))
    _randomise(model)
    inducer.set_attention_path(model, path)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    keep = _keep_mask(2, 7, causal=True, pad=2)
    attn(x, attention_mask=keep)
    assert attn.inducer.last_lam is None  # off by default
    attn.inducer.record_lam = True
    attn(x, attention_mask=keep)
    got = attn.inducer.last_lam
    q, k, _ = attn.c_attn(x).split(32, dim=2)
    q, k = (t.view(2, 7, 4, 8).transpose(1, 2) for t in (q, k))
    scores = ((q @ k.transpose(-1, -2)) * 8**-0.5).masked_fill(~keep, float("-inf"))
    s = attn.inducer.virtual_key_score(q, 8**-0.5)[..., None]
    expected = torch.softmax(torch.cat([scores, s], dim=-1), dim=-1)[..., -1]
    assert got.shape == (2, 4, 7) and not got.requires_grad
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1, :, :5], expected[1, :, :5])  # real queries
