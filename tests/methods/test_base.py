"""What methods share (methods/base.py): which attention modules a config selects."""

from __future__ import annotations

import pytest

import inducer
from inducer.methods.inducer_tuning import InducerModule
from inducer.methods.prefix_tuning import PrefixModule

from ..conftest import make_model

ATTENTION_METHODS = {
    "inducer": (lambda **kw: inducer.InducerConfig(**kw), InducerModule, ".inducer"),
    "prefix": (lambda **kw: inducer.PrefixConfig(length=2, **kw), PrefixModule, ".prefix"),
}


@pytest.mark.parametrize("method", list(ATTENTION_METHODS))
def test_attention_and_layer_selection(method):
    make_config, module_type, child = ATTENTION_METHODS[method]

    def adapted_names(**kw):
        model = inducer.attach(make_model("bart"), make_config(**kw))
        return sorted(n.rsplit(child, 1)[0] for n, m in model.named_modules() if isinstance(m, module_type))

    everything = adapted_names()
    assert len(everything) == 2 + 2 + 2  # encoder self, decoder self, decoder cross
    assert adapted_names(attention="cross") == [n for n in everything if "encoder_attn" in n]
    assert adapted_names(attention="self") == [n for n in everything if "encoder_attn" not in n]
    assert adapted_names(layers=[1]) == [n for n in everything if ".1." in n]
    with pytest.raises(ValueError, match="matches no attention module"):
        adapted_names(layers=[7])
    with pytest.raises(ValueError, match="matches no attention module"):
        inducer.attach(make_model("gpt2"), make_config(attention="cross"))
