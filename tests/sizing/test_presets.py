"""Named presets: the paper's settings and budget matching."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import inducer
from inducer.sizing.presets import parse_budget


@pytest.fixture(scope="module")
def minilm_shaped():
    """MiniLM's geometry on the meta device: real shapes, no weights."""
    with torch.device("meta"):
        return BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6,
                                                        num_attention_heads=12, intermediate_size=1536))


def test_paper_settings_reproduce_the_released_counts():
    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    assert inducer.preset("inducer+lora", model).count == 609_120
    assert inducer.preset("inducer", model).count == 609_696
    configs = inducer.preset("inducer+lora", model)
    assert [c.method for c in configs] == ["inducer", "lora"]
    assert configs[1].targets == ["q"] and configs[1].alpha == 32 and configs[1].dropout == 0.1


@pytest.mark.parametrize("name", ["prefix", "lora", "adapter", "parallel-adapter", "mam", "inducer",
                                  "inducer+lora", "inducer+mam"])
@pytest.mark.parametrize("budget", ["0.5%", "0.1%", 50_000])
def test_budget_is_met_within_two_percent(minilm_shaped, name, budget):
    configs = inducer.preset(name, minilm_shaped, budget=budget)
    target = parse_budget(budget, sum(p.numel() for p in minilm_shaped.parameters()))
    assert abs(configs.count - target) <= 0.02 * target, configs.summary
    assert f"{configs.count:,} parameters" in configs.summary
    # The reported count is what attach gives for the inference-time configs.
    with torch.device("meta"):
        inducer.attach(minilm_shaped, [c.inference_config() for c in configs])
    try:
        assert inducer.count_parameters(minilm_shaped).budget == configs.count
    finally:
        inducer.detach(minilm_shaped)


def test_coarse_methods_say_they_missed(minilm_shaped):
    configs = inducer.preset("kernel-mix", minilm_shaped, budget="0.1%")
    assert "outside 2%" in configs.summary


def test_every_preset_attaches_to_a_tiny_model():
    from ..conftest import make_batch, make_model

    for name in inducer.PRESETS:
        model = make_model("bert")
        configs = inducer.preset(name, model)
        # The preset counts what remains at inference (prefix-tuning drops its reparameterisation).
        inference = inducer.attach(make_model("bert"), [c.inference_config() for c in configs])
        assert inducer.count_parameters(inference).budget == configs.count, name
        # What the preset chose trains: every trainable tensor reached by the loss, finite outputs.
        inducer.attach(model, configs)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        logits = model(**make_batch("bert")).logits
        assert trainable and torch.isfinite(logits).all(), name
        logits.sum().backward()
        assert [n for n, p in trainable.items() if p.grad is None] == [], name


@pytest.mark.parametrize(("budget", "message"), [("lots", "neither a count"), (0, "less than one"),
                                                 (True, "must be an int"), ("-1%", "less than one")])
def test_bad_budgets_are_explained(budget, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(budget, 1000)


def test_unknown_preset_lists_the_known_ones(minilm_shaped):
    with pytest.raises(ValueError, match="unknown method 'lorra'.*inducer\\+lora"):
        inducer.preset("lorra", minilm_shaped)


def test_parse_budget_forms():
    assert parse_budget("0.5%", 2_000_000) == 10_000
    assert parse_budget("600,000", 1) == 600_000
    assert parse_budget(1234, 1) == 1234


def test_a_budget_below_the_smallest_setting_is_a_clear_error(minilm_shaped):
    with pytest.raises(ValueError, match="too small for 'mam'.*Raise the budget"):
        inducer.preset("mam", minilm_shaped, budget=500)


def test_explicit_sizes_replace_the_paper_settings():
    with torch.device("meta"):
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config())
    configs = inducer.preset("inducer", model, sizes={"r_k": 10, "r_v": 15})
    assert configs.count == 2_003_472 and (configs[0].r_k, configs[0].r_v) == (10, 15)
    with pytest.raises(ValueError, match="no size\\(s\\) \\['rank'\\]"):
        inducer.preset("inducer", model, sizes={"rank": 3})
    with pytest.raises(ValueError, match="not both"):
        inducer.preset("inducer", model, budget=1000, sizes={"r_k": 1})


def test_a_preset_choice_is_frozen_and_attaches_itself_or_its_configs():
    import dataclasses

    from ..conftest import make_model

    model = make_model("bert")
    choice = inducer.preset("inducer+lora", model, sizes={"r_k": 0})
    assert isinstance(choice, inducer.PresetChoice)
    assert choice.sizes == {"r_k": 0, "r_v": 4, "r": 4} and not hasattr(choice, "knobs")
    assert [c.method for c in choice] == ["inducer", "lora"] and len(choice) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.count = 0
    for configs in (choice, choice.configs):
        inducer.attach(model, configs)
        assert inducer.count_parameters(model).budget == choice.count
        inducer.detach(model)


def test_every_preset_is_declared_by_a_method_module():
    from inducer.methods import PRESETS, PresetSpec

    assert list(inducer.PRESETS) == ["full", "bitfit", "prefix", "lora", "adapter", "parallel-adapter",
                                     "mam", "kernel-mix", "inducer", "inducer+lora", "inducer+mam"]
    assert inducer.PRESETS is PRESETS
    assert all(isinstance(spec, PresetSpec) and spec.name == name for name, spec in PRESETS.items())
    # The count jump at r_k=0 (no key MLP) is declared by the inducer presets, not found by name.
    assert {n for n, s in PRESETS.items() if s.removed_at_zero} == {"inducer", "inducer+lora", "inducer+mam"}
    with pytest.raises(ValueError, match="need 0 in their range"):
        PresetSpec("x", "x", lambda r: [], {"r": 1}, {"r": range(1, 3)}, removed_at_zero=("r",))
