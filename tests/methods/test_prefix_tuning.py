"""Prefix-tuning inside attention: an independent reference, the invariance suite on every family,
the reparameterisation's save/fold/load, configs and budgets."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import inducer
from inducer.io.adapter_format import weights_path
from inducer.methods.prefix_tuning import ENCODER_NAME, PrefixEncoder, PrefixModule, inference_parameters

from ..conftest import (
    DECODERS,
    SEQ2SEQ,
    assert_padding_invariant,
    enable_checkpointing,
    logits_of,
    make_batch,
    make_model,
)
from ..runtime.test_adapter import _grads, _randomise
from .test_inducer_tuning import _keep_mask, spec_attention

LENGTH = 3
REPARAM = {"flat": None, "reparam": 5}


def _prefixed(family: str, reparam: int | None = None, attn: str = "sdpa", **config):
    """A float64 tiny model of ``family`` with prefixes (N(0, 1) at init: sizeable on purpose)."""
    model = make_model(family, attn).double()
    return inducer.attach(model, inducer.PrefixConfig(length=LENGTH, reparam_hidden=reparam, **config))


def _prefix_modules(model) -> list[PrefixModule]:
    return [m for m in model.modules() if isinstance(m, PrefixModule)]


def _manual_prefix_attention(q, k, v, keep, prefix_key, prefix_value, scaling):
    """The definition: concatenate the prefixes in front of the keys/values, one plain softmax.

    q (B, H, N, p); k, v (B, H, M, p) grouped per query head; prefix_key/value (H, l, p) likewise;
    keep (B, 1, N, M) bool for the real keys. Prefix columns are always visible.
    """
    batch = q.shape[0]
    k = torch.cat([prefix_key.expand(batch, -1, -1, -1), k], dim=2)
    v = torch.cat([prefix_value.expand(batch, -1, -1, -1), v], dim=2)
    visible = torch.ones(*keep.shape[:-1], prefix_key.shape[1], dtype=torch.bool)
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~torch.cat([visible, keep], dim=-1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


# --- an independent reference ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("mask", ["padded", "none"])
def test_gpt2_attention_module_matches_manual_concatenation(path, mask):
    """``mask="none"``: GPT-2 passes no mask and relies on the causal flag, which would be wrong
    (top-left aligned) once prefixes are prepended; an explicit mask must be built."""
    model = _prefixed("gpt2")
    inducer.set_attention_path(model, path)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    keep = _keep_mask(2, 7, causal=True, pad=2 if mask == "padded" else 0)
    got = attn(x, attention_mask=keep if mask == "padded" else None)[0]
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(2, 7, 4, 8).transpose(1, 2) for t in (q, k, v))
    heads = _manual_prefix_attention(q, k, v, keep, attn.prefix.key, attn.prefix.value, 8**-0.5)
    expected = attn.c_proj(heads.transpose(1, 2).flatten(2))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_llama_grouped_query_prefixes_live_on_key_value_heads(path):
    model = _prefixed("llama")
    inducer.set_attention_path(model, path)
    layer = model.model.layers[1].self_attn
    assert layer.prefix.key.shape == (2, LENGTH, 8)  # 2 key/value heads (under 6 query heads), p = 8
    x = torch.randn(2, 6, 48, dtype=torch.float64)
    cos, sin = model.model.rotary_emb(x, torch.arange(6)[None].expand(2, 6))
    keep = _keep_mask(2, 6, causal=True, pad=1)
    got = layer(x, position_embeddings=(cos, sin), attention_mask=keep)[0]
    q = layer.q_proj(x).view(2, 6, 6, 8).transpose(1, 2)
    k = layer.k_proj(x).view(2, 6, 2, 8).transpose(1, 2)
    v = layer.v_proj(x).view(2, 6, 2, 8).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)  # prefixes are not rotated: they have no position
    # Query head h reads key/value group h // 3, prefixes included.
    k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    pk, pv = (t.repeat_interleave(3, dim=0) for t in (layer.prefix.key, layer.prefix.value))
    heads = _manual_prefix_attention(q, k, v, keep, pk, pv, 8**-0.5)
    torch.testing.assert_close(got, layer.o_proj(heads.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_with_inducer_lambda_normalises_over_prefix_keys(path):
    """Prefix + inducer in one attach: the inducer's lambda sees prefix keys as keys (kernel view)."""
    model = make_model("gpt2").double()
    inducer.attach(model, [inducer.InducerConfig(r_k=2, r_v=3), inducer.PrefixConfig(length=LENGTH,
                                                                                      reparam_hidden=None)])
    _randomise(model)
    inducer.set_attention_path(model, path)
    attn = model.transformer.h[1].attn
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    keep = _keep_mask(2, 7, causal=True, pad=2)
    got = attn(x, attention_mask=keep)[0]
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(2, 7, 4, 8).transpose(1, 2) for t in (q, k, v))
    k = torch.cat([attn.prefix.key.expand(2, -1, -1, -1), k], dim=2)
    v = torch.cat([attn.prefix.value.expand(2, -1, -1, -1), v], dim=2)
    keep = torch.cat([torch.ones(2, 1, 7, LENGTH, dtype=torch.bool), keep], dim=-1)
    expected = spec_attention(q, k, v, keep, attn.inducer, 8**-0.5, attn.c_proj)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1, :5], expected[1, :5])


# --- the invariance suite on every family ------------------------------------------------------------


def test_fused_equals_reference_forward_and_gradients(family):
    """Flat prefixes here; the reparameterised ones run in test_combined_with_inducer_both_paths_agree."""
    model = _prefixed(family)
    batch = make_batch(family)
    base = logits_of(make_model(family).double(), batch)
    out_fused, grads_fused = logits_of(model, batch), _grads(model, batch)
    assert not torch.allclose(out_fused, base)
    inducer.set_attention_path(model, "reference")
    out_ref, grads_ref = logits_of(model, batch), _grads(model, batch)
    torch.testing.assert_close(out_fused, out_ref)
    assert grads_fused.keys() == grads_ref.keys() and len(grads_ref) > 0
    for name in grads_ref:
        assert grads_ref[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_fused[name], grads_ref[name], msg=name)


def test_combined_with_inducer_both_paths_agree(family):
    model = make_model(family).double()
    inducer.attach(model, [inducer.InducerConfig(r_k=2, r_v=3), inducer.PrefixConfig(length=LENGTH,
                                                                                      reparam_hidden=4)])
    _randomise(model)
    batch = make_batch(family)
    out_fused, grads_fused = logits_of(model, batch), _grads(model, batch)
    inducer.set_attention_path(model, "reference")
    torch.testing.assert_close(out_fused, logits_of(model, batch))
    grads_ref = _grads(model, batch)
    assert any(".inducer." in n for n in grads_ref) and any(".prefix." in n for n in grads_ref)
    for name in grads_ref:
        torch.testing.assert_close(grads_fused[name], grads_ref[name], msg=name)


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_padding_and_batch_composition_do_not_matter(family, path, pad_side):
    """Real tokens' outputs equal those of the unpadded sequence run alone (as in test_adapter)."""
    if pad_side == "left" and family not in DECODERS + ("t5",):
        pytest.skip("absolute positions shift under left padding in the base model itself")
    model = _prefixed(family)
    inducer.set_attention_path(model, path)
    assert_padding_invariant(model, family, pad_side)


@pytest.mark.parametrize("family", DECODERS + ("bart", "t5"))
@pytest.mark.parametrize("path", ["fused", "reference"])
def test_cached_generation_equals_recomputation(family, path):
    model = _prefixed(family, reparam=4)
    inducer.set_attention_path(model, path)
    batch = {k: v[:1] for k, v in make_batch(family, batch=1).items() if k != "decoder_input_ids"}
    config = model.generation_config
    config.forced_bos_token_id = config.forced_eos_token_id = None
    steps = 5
    generated = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               use_cache=True)
    if family in SEQ2SEQ:
        tokens = torch.tensor([[config.decoder_start_token_id]])
    else:
        tokens = batch["input_ids"]
    with torch.no_grad():
        for _ in range(steps):  # without a cache: re-run everything, argmax with EOS kept out
            if family in SEQ2SEQ:
                logits = model(**batch, decoder_input_ids=tokens, use_cache=False).logits[:, -1]
            else:
                logits = model(input_ids=tokens, use_cache=False).logits[:, -1]
            logits[:, config.eos_token_id] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


@pytest.mark.parametrize("family", DECODERS + ("bart",))
def test_prefixes_never_enter_the_cache(family):
    model = _prefixed(family)
    batch = make_batch(family)
    n = (batch["decoder_input_ids"] if family in SEQ2SEQ else batch["input_ids"]).shape[1]
    cache = model(**batch, use_cache=True).past_key_values
    self_cache = getattr(cache, "self_attention_cache", cache)
    assert isinstance(self_cache, DynamicCache) and self_cache.get_seq_length() == n
    if family == "bart":
        assert cache.cross_attention_cache.get_seq_length() == batch["input_ids"].shape[1]


def test_gradient_checkpointing_gives_same_gradients(family):
    model = _prefixed(family, reparam=4)
    batch = make_batch(family)
    model.train()
    expected = _grads(model, batch)
    enable_checkpointing(model)
    got = _grads(model, batch)
    assert any(n.startswith(ENCODER_NAME) for n in expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.parametrize("reparam", list(REPARAM))
def test_save_load_fold_and_detach(family, reparam, tmp_path):
    """Flat adapters are also saved and reloaded at the end of every reparameterised case."""
    if reparam == "flat" and family not in DECODERS:
        pytest.skip("flat adapters: decoders here; every family reloads a folded (flat) adapter below")
    base = make_model(family)
    batch = make_batch(family)
    state_before = {k: v.clone() for k, v in base.state_dict().items()}
    out_before = logits_of(base, batch)
    model = inducer.attach(base, inducer.PrefixConfig(length=LENGTH, reparam_hidden=REPARAM[reparam]))
    out_adapted = logits_of(model, batch)
    trained = inducer.count_parameters(model).added
    inducer.save_adapter(model, tmp_path / "adapter")

    detached = inducer.detach(model)
    assert detached is base and not hasattr(detached, ENCODER_NAME)
    assert all(torch.equal(detached.state_dict()[k], v) for k, v in state_before.items())
    assert detached.state_dict().keys() == state_before.keys()
    assert torch.equal(logits_of(detached, batch), out_before)
    assert not _prefix_modules(detached)

    # For further training: the same (reparameterised) tensors, trainable.
    resumed = inducer.load_adapter(make_model(family), tmp_path / "adapter")
    assert torch.equal(logits_of(resumed, batch), out_adapted)
    assert inducer.count_parameters(resumed).added == trained
    assert hasattr(resumed, ENCODER_NAME) == (reparam == "reparam")

    # For inference: the MLP folded into flat prefixes, same outputs, l * 2 * H_kv * p per module.
    folded = inducer.load_adapter(make_model(family), tmp_path / "adapter", inference=True)
    assert not hasattr(folded, ENCODER_NAME)
    modules = _prefix_modules(folded)
    assert all(m.key.shape == (m.kv_heads, LENGTH, m.head_dim) and not hasattr(m, "output") for m in modules)
    counts = inducer.count_parameters(folded)
    kv_heads = 2 if family == "llama" else 4
    assert counts.added == inference_parameters(folded) == len(modules) * 2 * LENGTH * kv_heads * 8
    torch.testing.assert_close(logits_of(folded, batch), out_adapted, rtol=1e-6, atol=1e-6)
    # The folded model saves as a flat adapter (no inference tensors besides the parameters).
    inducer.save_adapter(folded, tmp_path / "flat")
    reloaded = inducer.load_adapter(make_model(family), tmp_path / "flat")
    assert torch.equal(logits_of(reloaded, batch), logits_of(folded, batch))


def test_inference_tensors_are_stored_next_to_the_trained_ones(tmp_path):
    import json

    from safetensors.torch import load_file

    model = _prefixed("gpt2", reparam=4)
    directory = inducer.save_adapter(model, tmp_path / "adapter")
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(weights_path(directory))
    flat = [f"transformer.h.{i}.attn.prefix.{t}" for i in (0, 1) for t in ("key", "value")]
    assert config["inference_tensors"] == sorted(flat)
    assert {n for n in tensors if n not in flat} == {
        "prefix_encoder.embedding", "prefix_encoder.hidden.weight", "prefix_encoder.hidden.bias",
        *(f"transformer.h.{i}.attn.prefix.output.{t}" for i in (0, 1) for t in ("weight", "bias"))}
    key, value = model.transformer.h[1].attn.prefix.key_value()
    assert torch.equal(tensors["transformer.h.1.attn.prefix.key"], key.detach())
    assert torch.equal(tensors["transformer.h.1.attn.prefix.value"], value.detach())


def test_methods_containing_prefixes_fold_too(tmp_path):
    """Folding is per prefix module, so a composite method (MAM) folds with no code of its own."""
    model = inducer.attach(make_model("gpt2"), inducer.MAMConfig(prefix_length=2, reparam_hidden=4,
                                                                 bottleneck=3))
    batch = make_batch("gpt2")
    inducer.save_adapter(model, tmp_path / "mam")
    folded = inducer.load_adapter(make_model("gpt2"), tmp_path / "mam", inference=True)
    (folded_config,) = folded._inducer_state.adapters["default"].configs
    assert folded_config.reparam_hidden is None and not hasattr(folded, ENCODER_NAME)
    torch.testing.assert_close(logits_of(folded, batch), logits_of(model, batch), rtol=1e-6, atol=1e-6)


def test_training_mode_with_dropout_runs_on_both_paths():
    for path in ("fused", "reference"):
        model = make_model("gpt2", dropout=0.3)
        inducer.attach(model, inducer.PrefixConfig(length=LENGTH))
        inducer.set_attention_path(model, path)
        batch = make_batch("gpt2")
        model.train()
        a = logits_of(model, batch)
        a.sum().backward()
        model.eval()
        assert not torch.allclose(a, logits_of(model, batch))
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_deepcopy_keeps_the_shared_encoder_shared():
    model = _prefixed("gpt2", reparam=4)
    clone = copy.deepcopy(model)
    batch = make_batch("gpt2")
    expected = logits_of(model, batch)
    torch.testing.assert_close(logits_of(clone, batch), expected)
    encoder = getattr(clone, ENCODER_NAME)
    assert all(m._encoder[0] is encoder for m in _prefix_modules(clone))
    with torch.no_grad():
        encoder.embedding.add_(1.0)
    assert not torch.allclose(logits_of(clone, batch), expected)
    assert torch.equal(logits_of(model, batch), expected)


# --- parameters, budgets, selection, configs ---------------------------------------------------------


def test_parameter_names_shapes_and_counts():
    model = _prefixed("llama")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert shapes == {f"model.layers.{i}.self_attn.prefix.{t}": (2, LENGTH, 8)
                      for i in (0, 1) for t in ("key", "value")}
    assert inducer.count_parameters(model).added == inference_parameters(model) == 2 * 2 * LENGTH * 2 * 8

    h, d = 5, 48
    model = _prefixed("llama", reparam=h)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert shapes == {
        "prefix_encoder.embedding": (LENGTH, d), "prefix_encoder.hidden.weight": (h, d),
        "prefix_encoder.hidden.bias": (h,),
        **{f"model.layers.{i}.self_attn.prefix.output.{t}": s for i in (0, 1)
           for t, s in (("weight", (2 * 2 * 8, h)), ("bias", (2 * 2 * 8,)))},
    }
    expected = LENGTH * d + d * h + h + 2 * (h * 32 + 32)
    assert inducer.count_parameters(model).added == expected
    assert inference_parameters(model) == 2 * 2 * LENGTH * 2 * 8


def test_shared_encoder_at_the_root_is_not_the_task_head():
    model = _prefixed("bert", reparam=4)
    counts = inducer.count_parameters(model)
    assert counts.head == sum(p.numel() for p in model.classifier.parameters())
    assert counts.added == sum(p.numel() for n, p in model.named_parameters() if "prefix" in n)


def test_budget_on_gpt2_small_shapes():
    """Li & Liang's GPT-2 setting (l=10, h=512) on real shapes, built on the meta device."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    inducer.attach(model, inducer.PrefixConfig(length=10, reparam_hidden=512))
    d, h, modules = 768, 512, 12
    assert inducer.count_parameters(model).added == 10 * d + d * h + h + modules * (h * 2 * d + 2 * d)
    assert inference_parameters(model) == modules * 10 * 2 * d  # = Li & Liang's 10 * 2 * 12 * 768


def test_initialisation():
    flat = _prefix_modules(_prefixed("bert", init_std=0.5))[0]
    assert 0.3 < flat.key.std() < 0.7
    zero = _prefixed("bert", reparam=4, init_std=0)
    for module in _prefix_modules(zero):
        key, value = module.key_value()
        assert not key.any() and not value.any()
    assert getattr(zero, ENCODER_NAME).embedding.std() > 0.5  # positions stay distinguishable
    assert not _prefix_modules(_prefixed("bert", init_std=0))[0].key.any()
    assert isinstance(getattr(zero, ENCODER_NAME), PrefixEncoder)


def test_two_prefix_configs_conflict_and_leave_the_model_untouched():
    model = make_model("bart")
    names = set(dict(model.named_modules()))
    with pytest.raises(inducer.ConflictError, match="prefix"):
        inducer.attach(model, [inducer.PrefixConfig(attention="self", reparam_hidden=None),
                               inducer.PrefixConfig(attention="all", reparam_hidden=4)])
    assert set(dict(model.named_modules())) == names
    assert not hasattr(model, "_inducer_state")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(length=0), "length"),
        (dict(length=2.5), "length"),
        (dict(reparam_hidden=0), "reparam_hidden"),
        (dict(reparam_hidden="512"), "reparam_hidden"),
        (dict(attention="both"), "attention"),
        (dict(layers=[]), "layers"),
        (dict(layers=[-1]), "layers"),
        (dict(init_std=-0.1), "init_std"),
        (dict(init_std=True), "init_std"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        inducer.PrefixConfig(**kwargs)


def test_config_roundtrip_and_defaults():
    config = inducer.PrefixConfig(length=4, reparam_hidden=None, attention="cross", layers=[0])
    assert inducer.PrefixConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["method"] == "prefix"
    default = inducer.PrefixConfig()
    assert (default.length, default.reparam_hidden, default.attention) == (16, 512, "all")
    assert default.inference_config() == inducer.PrefixConfig(reparam_hidden=None)
    with pytest.raises(ValueError, match="unknown PrefixConfig fields"):
        inducer.PrefixConfig.from_dict({"length": 2, "mid_dim": 3})


# --- init="zero" / init="tokens" (the initialisation study) -----------------------------------------


@pytest.mark.parametrize("mode", list(REPARAM))
def test_zero_init_gives_zero_prefixes(mode):
    model = _prefixed("bert", reparam=REPARAM[mode], init="zero")
    for module in _prefix_modules(model):
        key, value = module.key_value()
        assert not key.any() and not value.any()
    assert _prefix_modules(_prefixed("bert", reparam=REPARAM[mode]))[0].key_value()[0].abs().sum() > 0


@pytest.mark.parametrize("mode", list(REPARAM))
def test_token_init_equals_key_value_projections_of_the_layer_inputs(mode):
    """Recomputed plainly: the frozen model's hidden states entering layer L, through that layer's
    key / value projections, split into heads. [5, 6] is cycled to LENGTH = 3 positions."""
    tokens = [5, 6]
    base = make_model("bert").double()
    ids = torch.tensor([[5, 6, 5]])
    with torch.no_grad():
        mask = torch.ones_like(ids)
        hidden = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    model = _prefixed("bert", reparam=REPARAM[mode], init="tokens", init_tokens=tokens)
    layers = model.bert.encoder.layer
    assert len(_prefix_modules(model)) == len(layers) == 2
    for index, layer in enumerate(layers):
        attn = layer.attention.self
        key, value = attn.prefix.key_value()
        for got, projection in ((key, attn.key), (value, attn.value)):
            expected = projection(hidden[index])[0].view(LENGTH, 4, 8).transpose(0, 1)
            torch.testing.assert_close(got.detach(), expected.detach())
    if mode == "reparam":  # still trained through the MLP, whose output layer was solved for
        assert getattr(model, ENCODER_NAME).embedding.requires_grad
        assert layers[0].attention.self.prefix.output.weight.requires_grad
    # The model is left as it was: eval mode kept, prefixes active (not in capture mode).
    assert all(m._captured is None for m in _prefix_modules(model))


def test_token_init_on_a_decoder_and_training_mode_is_restored():
    model = make_model("gpt2").double().train()
    config = inducer.PrefixConfig(length=2, reparam_hidden=None, init="tokens", init_tokens=[7, 8])
    inducer.attach(model, config)
    assert model.training
    ids = torch.tensor([[7, 8]])
    base = make_model("gpt2").double()
    with torch.no_grad():
        hidden = base(input_ids=ids, output_hidden_states=True).hidden_states
    attn = model.transformer.h[1].attn
    block = base.transformer.h[1]  # pre-LN: the attention reads ln_1 of the block's input
    _, k, v = block.attn.c_attn(block.ln_1(hidden[1])).split(32, dim=2)
    torch.testing.assert_close(attn.prefix.key, k[0].view(2, 4, 8).transpose(0, 1))
    torch.testing.assert_close(attn.prefix.value, v[0].view(2, 4, 8).transpose(0, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(init="words"), "init"),
        (dict(init="tokens"), "init_tokens"),
        (dict(init="tokens", init_tokens=[]), "init_tokens"),
        (dict(init="tokens", init_tokens=[1, -2]), "init_tokens"),
        (dict(init="random", init_tokens=[1]), "init_tokens"),
    ],
)
def test_invalid_init_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inducer.PrefixConfig(**kwargs)


def test_token_init_config_roundtrip_and_budget_count():
    config = inducer.PrefixConfig(length=3, init="tokens", init_tokens=[4, 5])
    assert inducer.PrefixConfig.from_dict(config.to_dict()) == config
    model = make_model("bert")
    plain = inducer.preset("prefix", model, sizes={"length": 3}).count
    from inducer.sizing.budget import BudgetCounter

    assert BudgetCounter(model)([config]) == plain  # counting on a meta twin runs no forward


@pytest.mark.parametrize("reparam", [None, 4])
def test_a_prefix_attach_failing_part_way_leaves_the_model_unchanged(reparam):
    # init="tokens" runs the model after every prefix is added; an id outside the vocabulary makes
    # that forward fail, and attach (not the method) must remove what was added.
    model = make_model("gpt2")
    batch = make_batch("gpt2")
    names = [n for n, _ in model.named_parameters()]
    implementation = model.config._attn_implementation
    expected = logits_of(model, batch)
    config = inducer.PrefixConfig(length=2, reparam_hidden=reparam, init="tokens", init_tokens=[10_000])
    with pytest.raises(IndexError):
        inducer.attach(model, config)
    assert [n for n, _ in model.named_parameters()] == names
    assert not hasattr(model, "_inducer_state") and not hasattr(model, ENCODER_NAME)
    assert model.config._attn_implementation == implementation
    torch.testing.assert_close(logits_of(model, batch), expected)
