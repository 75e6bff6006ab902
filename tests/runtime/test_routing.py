"""Per-row routing: row i of a batch uses adapter i, for every method and family, in forward passes,
cached generation (greedy, beams, sampling), gradient checkpointing and multi-task training."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.methods.inducer_tuning import InducerModule
from inducer.methods.lora import LoRAModule

from ..conftest import DECODERS, SEQ2SEQ, enable_checkpointing, logits_of, make_batch, make_model
from .test_adapter import VARIANTS  # the inducer variants the whole suite uses

METHODS = {
    "inducer": lambda: inducer.InducerConfig(r_k=2, r_v=3),
    "prefix": lambda: inducer.PrefixConfig(length=3, reparam_hidden=8),
    "lora": lambda: inducer.LoRAConfig(r=2),
    "adapter": lambda: inducer.AdapterConfig(kind="pfeiffer", bottleneck=4),
    "parallel-adapter": lambda: inducer.AdapterConfig(kind="parallel", bottleneck=4, placement="both"),
    "mam": lambda: inducer.MAMConfig(prefix_length=3, reparam_hidden=8, bottleneck=4),
    "kernel-mix": lambda: inducer.KernelMixConfig(r=2),
    "inducer+lora": lambda: [inducer.InducerConfig(r_k=2, r_v=3), inducer.LoRAConfig(r=2, targets=["q"])],
}
ROUTES = ["b", None, "a"]  # make_batch's three rows


def _randomise(model) -> None:
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "__" in name:  # every adapter's tensors (none is "default" here)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _routed_model(family: str, method: str, second: str | None = None):
    """A float64 ``family`` model with adapters "a" (``method``) and "b" (``second`` or ``method``)."""
    model = make_model(family).double()
    inducer.attach(model, METHODS[method](), name="a")
    inducer.attach(model, METHODS[second or method](), name="b")
    _randomise(model)
    return model


def _alone(model, name: str | None):
    """A context running ``model`` with adapter ``name`` only (None: the base)."""
    if name is None:
        return inducer.disable_adapter(model)
    inducer.set_adapter(model, name)
    return _nothing()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _row(batch: dict, row: int) -> dict:
    return {k: v[row: row + 1] for k, v in batch.items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_routed_forward_equals_each_row_alone_with_its_adapter(family, method):
    model = _routed_model(family, method, second="inducer" if method != "inducer" else "lora")
    batch = make_batch(family)
    with inducer.route(model, ROUTES):
        routed = logits_of(model, batch)
    for row, name in enumerate(ROUTES):
        with _alone(model, name):
            expected = logits_of(model, _row(batch, row))[0]
        torch.testing.assert_close(routed[row], expected, msg=f"row {row} ({name})")
        with _alone(model, "a" if name != "a" else "b"):  # the routing matters: another adapter differs
            assert not torch.allclose(routed[row], logits_of(model, _row(batch, row))[0])


@pytest.mark.parametrize("method", ["inducer", "prefix", "lora", "mam"])
def test_routing_with_left_padding_and_the_eager_path(method):
    model = _routed_model("llama", method)
    inducer.set_attention_path(model, "reference")
    batch = make_batch("llama", pad_side="left")
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with inducer.route(model, ROUTES):
        routed = logits_of(model, batch)
    for row, name in enumerate(ROUTES):
        real = batch["attention_mask"][row].bool()
        single = {k: v[row: row + 1][:, real] for k, v in batch.items()}
        with _alone(model, name):
            torch.testing.assert_close(routed[row][real], logits_of(model, single)[0])


def _generate(model, batch, **options):
    return model.generate(**batch, max_new_tokens=4, min_new_tokens=4, use_cache=True, pad_token_id=0,
                          **options)


GENERATORS = DECODERS + SEQ2SEQ


@pytest.mark.parametrize("family", GENERATORS)
@pytest.mark.parametrize("method", ["inducer", "prefix", "inducer+lora", "mam"])
def test_routed_greedy_generation_equals_each_row_alone(family, method):
    model = _routed_model(family, method, second="lora")
    batch = make_batch(family, pad_side="left" if family in DECODERS else "right")
    batch.pop("decoder_input_ids", None)
    with inducer.route(model, ROUTES):
        routed = _generate(model, batch)
    for row, name in enumerate(ROUTES):
        with _alone(model, name):
            assert torch.equal(routed[row], _generate(model, _row(batch, row))[0]), (row, name)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_beams_and_returned_sequences_expand_the_routing(family):
    model = _routed_model(family, "inducer", second="prefix")
    batch = make_batch(family, pad_side="left" if family in DECODERS else "right")
    batch.pop("decoder_input_ids", None)
    beams = dict(num_beams=3, num_return_sequences=2)
    # Sampling from one token (top_k=1) is greedy, over a batch grown by num_return_sequences.
    sampled = dict(do_sample=True, top_k=1, num_return_sequences=2)
    for options in (beams, sampled):
        with inducer.route(model, ROUTES):
            routed = _generate(model, batch, **options)
        assert routed.shape[0] == 2 * len(ROUTES)
        for row, name in enumerate(ROUTES):
            with _alone(model, name):
                expected = _generate(model, _row(batch, row), **options)
            assert torch.equal(routed[2 * row: 2 * row + 2], expected), (options, row, name)


def test_adapter_names_keyword_is_the_same_routing():
    model = _routed_model("gpt2", "inducer+lora", second="prefix")
    batch = make_batch("gpt2", pad_side="left")
    with inducer.route(model, ROUTES):
        expected_logits, expected = logits_of(model, batch), _generate(model, batch)
    torch.testing.assert_close(model(**batch, adapter_names=ROUTES).logits, expected_logits)
    assert torch.equal(_generate(model, batch, adapter_names=ROUTES), expected)
    # The routing ends with the call (compared on real tokens: fully masked padding queries differ).
    inducer.set_adapter(model, "a")
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits_of(model, batch)[2][real[2]], expected_logits[2][real[2]])
    assert not torch.allclose(logits_of(model, batch)[0][real[0]], expected_logits[0][real[0]])
    with pytest.raises(ValueError, match="no adapter named 'c'"):
        _generate(model, batch, adapter_names=["a", "c", None])


def _loss(model, batch) -> torch.Tensor:
    # A sum over rows: each row's gradient is its own, whatever batch it comes in.
    return logits_of(model, batch).pow(2).sum()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "t5"])
@pytest.mark.parametrize("method", ["inducer+lora", "prefix", "parallel-adapter", "kernel-mix"])
def test_multi_task_gradients_equal_single_task_gradients_on_the_same_rows(family, method):
    model = _routed_model(family, method, second="inducer")
    batch = make_batch(family)
    inducer.set_adapter(model, ["a", "b"])
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and "__" in n}
    model.zero_grad()
    with inducer.route(model, ROUTES):
        _loss(model, batch).backward()
    mixed = {n: p.grad.clone() for n, p in params.items()}
    for name, rows in (("a", [2]), ("b", [0])):
        inducer.set_adapter(model, name)
        model.zero_grad()
        _loss(model, {k: v[rows] for k, v in batch.items()}).backward()
        own = [n for n in params if f"__{name}." in n]
        assert own and sum(mixed[n].abs().sum() for n in own) > 0
        for n in own:
            torch.testing.assert_close(mixed[n], params[n].grad, msg=n)


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_routing_under_gradient_checkpointing(family):
    model = _routed_model(family, "inducer+lora", second="mam")
    batch = make_batch(family)
    inducer.set_adapter(model, ["a", "b"])
    model.train()
    with inducer.route(model, ROUTES):
        model.zero_grad()
        plain = logits_of(model, batch)
        plain.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        enable_checkpointing(model)
        model.zero_grad()
        checkpointed = logits_of(model, batch)
        checkpointed.pow(2).sum().backward()
    torch.testing.assert_close(checkpointed, plain)
    assert grads and all(torch.allclose(p.grad, grads[n]) for n, p in model.named_parameters() if n in grads)


def test_routes_are_per_model_and_refuse_bad_lists():
    first, second = _routed_model("gpt2", "lora"), _routed_model("gpt2", "lora")
    batch = make_batch("gpt2")
    inducer.set_adapter(second, "a")
    before = logits_of(second, batch)
    with inducer.route(first, ROUTES):
        torch.testing.assert_close(logits_of(second, batch), before)
        with pytest.raises(ValueError, match="3 adapter names for a batch of 2 rows"):
            logits_of(first, {k: v[:2] for k, v in batch.items()})
    with pytest.raises(ValueError, match="no adapter named 'c'"):
        with inducer.route(first, ["a", "c", None]):
            pass
    with pytest.raises(ValueError, match="one adapter name"):
        with inducer.route(first, "a"):
            pass


def test_eight_rows_eight_adapters():
    model = make_model("llama").double()
    names = [f"task{i}" for i in range(8)]
    for i, name in enumerate(names):
        inducer.attach(model, METHODS["inducer+lora" if i % 2 else "inducer"](), name=name)
    _randomise(model)
    batch = make_batch("llama", batch=8, length=6)
    batch["attention_mask"][:] = 1
    with inducer.route(model, names):
        routed = logits_of(model, batch)
    for row, name in enumerate(names):
        inducer.set_adapter(model, name)
        torch.testing.assert_close(routed[row], logits_of(model, _row(batch, row))[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inducers_of_one_shape_are_gathered_per_row(variant, monkeypatch):
    model = make_model("llama").double()
    for name in ("a", "b", "c"):
        inducer.attach(model, inducer.InducerConfig(**VARIANTS[variant]), name=name)
    _randomise(model)
    calls = []
    original = InducerModule.compose_routed.__func__
    monkeypatch.setattr(InducerModule, "compose_routed",
                        classmethod(lambda cls, *a: calls.append(1) or original(cls, *a)))
    batch = make_batch("llama", batch=4)
    routes = ["c", "a", None, "b"]
    with inducer.route(model, routes):
        routed = logits_of(model, batch)
    assert calls  # the gathered pass ran
    for row, name in enumerate(routes):
        with _alone(model, name):
            torch.testing.assert_close(routed[row], logits_of(model, _row(batch, row))[0])


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_loras_of_one_shape_are_gathered_per_row(family, monkeypatch):
    model = make_model(family).double()
    for name in ("a", "b", "c"):
        inducer.attach(model, inducer.LoRAConfig(r=2, targets=["q", "v", "ffn_in"]), name=name)
    _randomise(model)
    calls = []
    original = LoRAModule.routed_update
    monkeypatch.setattr(LoRAModule, "routed_update", staticmethod(lambda *a: calls.append(1) or original(*a)))
    batch = make_batch(family, batch=4)
    routes = ["c", "a", None, "b"]
    with inducer.route(model, routes):
        routed = logits_of(model, batch)
    assert calls
    for row, name in enumerate(routes):
        with _alone(model, name):
            torch.testing.assert_close(routed[row], logits_of(model, _row(batch, row))[0])


@pytest.mark.parametrize("method", list(METHODS))
def test_disable_is_the_base_bit_identical_and_none_rows_too(family, method):
    model = _routed_model(family, method)
    batch = make_batch(family)
    # Without gradients: whether inputs need them can change sdpa's kernel choice, hence the last bit.
    with torch.no_grad():
        base = logits_of(make_model(family).double(), batch)
        with inducer.disable_adapter(model):
            assert torch.equal(logits_of(model, batch), base)
            with inducer.route(model, ["a", "b", "a"]):  # disabled wins over routing
                assert torch.equal(logits_of(model, batch), base)
        with inducer.route(model, [None, None, None]):
            torch.testing.assert_close(logits_of(model, batch), base)


def test_feed_forward_adapters_of_a_mixture_route_per_row():
    # gpt-oss's MLP returns (hidden states, router logits): routing keeps rows in the first element.
    import warnings

    from tests.sweep.architectures import ARCHITECTURES

    arch = next(a for a in ARCHITECTURES if a.name == "gpt-oss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = arch.build()
    for name in ("a", "b"):
        inducer.attach(model, inducer.AdapterConfig(kind="houlsby", placement="ffn", bottleneck=4), name=name)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "adapter_ffn" in parameter_name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = {}
        for name in ("a", "b"):
            inducer.set_adapter(model, name)
            alone[name] = model(input_ids=ids).logits
        with inducer.route(model, ["a", "b"]):
            routed = model(input_ids=ids).logits
    assert not torch.allclose(alone["a"], alone["b"])
    torch.testing.assert_close(routed[0], alone["a"][0])
    torch.testing.assert_close(routed[1], alone["b"][1])
