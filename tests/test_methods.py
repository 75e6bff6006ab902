"""Every method (and the paper's combinations) x every family: the core's invariance suite."""

from __future__ import annotations

import pytest
import torch

import inducer

from .conftest import (
    DECODERS,
    SEQ2SEQ,
    assert_padding_invariant,
    enable_checkpointing,
    logits_of,
    make_batch,
    make_model,
)

METHODS = {
    "lora": lambda: inducer.LoRAConfig(r=2, targets=["q", "k", "v", "o", "ffn_in", "ffn_out"]),
    "houlsby": lambda: inducer.AdapterConfig(kind="houlsby", bottleneck=3, layer_norm=True),
    "pfeiffer": lambda: inducer.AdapterConfig(kind="pfeiffer", bottleneck=3),
    "parallel": lambda: inducer.AdapterConfig(kind="parallel", bottleneck=3, scale=4.0, placement="both"),
    "kernel-mix": lambda: inducer.KernelMixConfig(r=2),
    "mam": lambda: inducer.MAMConfig(prefix_length=2, reparam_hidden=4, bottleneck=3),
    "bitfit": lambda: inducer.BitFitConfig(),
    "full": lambda: inducer.FullFineTuneConfig(),
    "inducer+lora": lambda: [inducer.InducerConfig(r_k=2, r_v=3), inducer.LoRAConfig(r=2, targets=["q"])],
    "inducer+adapter": lambda: [inducer.InducerConfig(r_k=2, r_v=3), inducer.LoRAConfig(r=2, targets=["q"]),
                                inducer.AdapterConfig(kind="parallel", bottleneck=3, scale=2.0)],
}
NO_BIASES = ("llama", "t5")  # BitFit adds zero biases there (tests/methods/test_bitfit.py)
ZERO_START = ("lora", "houlsby", "pfeiffer", "parallel", "kernel-mix", "bitfit", "full")


def _adapted(family: str, method: str, perturb: bool = True):
    model = make_model(family).double()
    inducer.attach(model, METHODS[method]())
    if perturb:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


@pytest.fixture(params=list(METHODS))
def method(request) -> str:
    return request.param


def test_zero_initialised_methods_start_as_the_base_model(family, method):
    if method not in ZERO_START:
        pytest.skip("inducer combinations start near, not at, the base model")
    base = make_model(family).double()
    batch = make_batch(family)
    expected = logits_of(base, batch)
    inducer.attach(base, METHODS[method]())
    torch.testing.assert_close(logits_of(base, batch), expected, rtol=1e-12, atol=1e-12)


def test_gradients_reach_exactly_the_trainable_parameters(family, method):
    model = _adapted(family, method)
    model.train()
    logits_of(model, make_batch(family)).pow(2).sum().backward()
    counts = inducer.count_parameters(model)
    assert counts.budget > 0
    for name, p in model.named_parameters():
        if family == "bert2bert" and "encoder.pooler" in name:
            continue  # EncoderDecoderModel never uses its encoder's pooler
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_padding_and_batch_of_one(family, method):
    assert_padding_invariant(_adapted(family, method), family)


@pytest.mark.parametrize("family", DECODERS + ("bart", "t5"))
def test_cached_generation_equals_recomputation(family, method):
    model = _adapted(family, method)
    batch = {k: v[:1] for k, v in make_batch(family, batch=1).items() if k != "decoder_input_ids"}
    config = model.generation_config
    config.forced_bos_token_id = config.forced_eos_token_id = None
    generated = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    tokens = (torch.tensor([[config.decoder_start_token_id]]) if family in SEQ2SEQ
              else batch["input_ids"])
    for _ in range(4):
        if family in SEQ2SEQ:
            logits = model(**batch, decoder_input_ids=tokens, use_cache=False).logits[:, -1]
        else:
            logits = model(input_ids=tokens, use_cache=False).logits[:, -1]
        logits[:, config.eos_token_id] = float("-inf")
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_gradient_checkpointing_gives_same_gradients(family, method):
    model = _adapted(family, method)
    batch = make_batch(family)
    model.train()

    def grads():
        model.zero_grad()
        logits_of(model, batch).pow(2).sum().backward()
        return {n: None if p.grad is None else p.grad.clone()
                for n, p in model.named_parameters() if p.requires_grad}

    expected = grads()
    enable_checkpointing(model)
    got = grads()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_save_load_and_detach(family, method, tmp_path):
    batch = make_batch(family)
    base = make_model(family).double()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    expected_base = logits_of(base, batch)
    model = inducer.attach(base, METHODS[method]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            # The task head is trained in place (it belongs to the base model); leave it here so
            # detach can be checked bit for bit. BitFit/full train base weights, perturb those.
            if p.requires_grad and (name not in state or method in ("bitfit", "full")):
                p.add_(0.05)
    adapted = logits_of(model, batch)
    inducer.save_adapter(model, tmp_path)
    loaded = inducer.load_adapter(make_model(family).double(), tmp_path)
    assert torch.equal(logits_of(loaded, batch), adapted)
    if method == "full" or (method == "bitfit" and family not in NO_BIASES):
        return  # these train base parameters in place: detach keeps the trained values
    inducer.detach(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(logits_of(model, batch), expected_base)


def test_composition_order_is_the_list_order():
    """Two hooks on one projection run in list order: adapter(out + E) differs from adapter(out) + E."""
    batch = make_batch("gpt2")
    outs = []
    for order in ((0, 1), (1, 0)):
        configs = [inducer.InducerConfig(r_k=2, r_v=3),
                   inducer.AdapterConfig(kind="pfeiffer", bottleneck=3, placement="attn")]
        model = make_model("gpt2").double()
        inducer.attach(model, [configs[i] for i in order])
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _name, p in sorted(model.named_parameters()):  # same values in both orders
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        outs.append(logits_of(model, batch))
    assert not torch.allclose(outs[0], outs[1])


def test_conflicting_methods_are_refused_and_leave_the_model_untouched():
    model = make_model("bert")
    with pytest.raises(inducer.ConflictError, match="same slot"):
        inducer.attach(model, [inducer.LoRAConfig(targets=["q"]), inducer.LoRAConfig(r=4, targets=["q"])])
    assert not any("lora" in n for n, _ in model.named_modules())
    assert model.config._attn_implementation == "sdpa"
    assert all(p.requires_grad for p in model.parameters())


def test_a_method_failing_half_way_leaves_nothing_behind(monkeypatch):
    """MAM adds its prefixes, then its adapter part fails: the unreported prefixes go too."""
    from inducer.methods.adapters import AdapterConfig

    def fail(*_args, **_kwargs):
        raise RuntimeError("adapter part failed")

    monkeypatch.setattr(AdapterConfig, "apply", fail)
    model = make_model("bert")
    names = set(dict(model.named_modules()))
    with pytest.raises(RuntimeError, match="adapter part failed"):
        inducer.attach(model, inducer.MAMConfig(prefix_length=2, bottleneck=2))
    assert set(dict(model.named_modules())) == names
    assert model.config._attn_implementation == "sdpa"
    assert all(p.requires_grad for p in model.parameters())


def test_softmax_changing_features_are_refused_not_ignored():
    from inducer.runtime.attention import _make_attention_function

    model = inducer.attach(make_model("llama"), inducer.InducerConfig())
    attention = model.model.layers[0].self_attn
    fn = _make_attention_function("fused", "sdpa")
    q = torch.randn(1, 6, 3, 8)
    kv = torch.randn(1, 2, 3, 8)
    # Soft-capping and gpt-oss's s_aux sinks are implemented (tests/runtime/test_attention.py); other
    # models' sink conventions (per-query ``sinks``) are not, and are refused.
    with pytest.raises(NotImplementedError, match="sinks"):
        fn(attention, q, kv, kv, None, sinks=torch.zeros(1, 6, 3, 1))
