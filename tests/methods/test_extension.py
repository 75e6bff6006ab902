"""The attention function calls any AttentionExtension child of an attention module, by interface."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.core.families import find_attention_sites
from inducer.methods.extension import AttentionExtension, attention_extensions

from ..conftest import logits_of, make_batch, make_model


class Recorder(AttentionExtension):
    """Adds one zero key (seen by every query) and records what compose receives."""

    extends_keys = True
    needs_lse = True

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def extend(self, key, value, mask):
        self.log.append(("extend", key.shape[2]))
        zeros = key.new_zeros(*key.shape[:2], 1, key.shape[-1])
        if mask is not None:
            mask = torch.cat([mask.new_zeros(*mask.shape[:-1], 1), mask], dim=-1)
        return torch.cat([zeros, key], 2), torch.cat([zeros, value], 2), mask

    def compose(self, query, out, lse, scaling, dropout, training):
        self.log.append(("compose", lse is not None))
        return out


@pytest.mark.parametrize("path", ["reference", "fused"])
def test_a_new_extension_runs_without_attention_naming_it(path):
    model = make_model("gpt2")
    batch = make_batch("gpt2")
    inducer.attach(model, inducer.InducerConfig())  # any method: switches to inducer's attention
    inducer.set_attention_path(model, path)
    site = find_attention_sites(model)[0]
    log: list = []
    site.module.add_module("recorder", Recorder(log))
    assert [type(e).__name__ for e in attention_extensions(site.module)] == ["InducerModule", "Recorder"]
    logits_of(model, batch)
    # Every extension extends before any composes; the LSE is handed over because one needs it.
    assert [entry[0] for entry in log] == ["extend", "compose"] and log[1] == ("compose", True)
    del site.module.recorder
    inducer.detach(model)
    assert attention_extensions(site.module) == []
