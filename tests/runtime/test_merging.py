"""merge_and_unload: a plain model whose outputs equal the adapted (merged) model's."""

from __future__ import annotations

import pytest
import torch

import inducer

from ..conftest import make_batch, make_model
from ..integrations.common import perturb


def _trained(family: str, configs):
    return perturb(inducer.attach(make_model(family), configs, train_head=False), seed=5)


MERGEABLE = {
    "lora-gpt2-fused": ("gpt2", lambda: [inducer.LoRAConfig(r=2, targets=["q", "v", "ffn_in"])]),
    "lora-llama": ("llama", lambda: [inducer.LoRAConfig(r=2, targets=["q", "k", "v", "o"])]),
    "kernel-mix-bert": ("bert", lambda: [inducer.KernelMixConfig(r=2)]),
    "kernel-mix-llama": ("llama", lambda: [inducer.KernelMixConfig(r=2)]),
    "kernel-mix-gpt2": ("gpt2", lambda: [inducer.KernelMixConfig(r=2)]),
    "lora+bitfit-bert": ("bert", lambda: [inducer.LoRAConfig(r=2), inducer.BitFitConfig()]),
    "lora-t5": ("t5", lambda: [inducer.LoRAConfig(r=2, targets=["q", "v", "o"])]),
}


@pytest.mark.parametrize("case", sorted(MERGEABLE))
def test_merge_and_unload_gives_the_adapted_logits_and_a_plain_model(case):
    family, configs = MERGEABLE[case]
    model = _trained(family, configs())
    batch = make_batch(family)
    with torch.no_grad():
        adapted = model(**batch).logits
        inducer.merge(model)
        merged = model(**batch).logits
    plain = inducer.merge_and_unload(model)
    with torch.no_grad():
        out = plain(**batch).logits
    torch.testing.assert_close(out, merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, adapted, rtol=1e-4, atol=1e-4)
    assert type(plain) is type(make_model(family))
    assert inducer.runtime.adapter.adapter_state(plain) is None
    assert not any("lora" in n or "kernel_mix" in n for n, _ in plain.named_modules())
    assert set(plain.state_dict()) == set(make_model(family).state_dict())
    assert not plain.config._attn_implementation.startswith("inducer")


def test_the_merged_model_saves_and_reloads_as_an_ordinary_model(tmp_path):
    model = _trained("gpt2", [inducer.LoRAConfig(r=2)])
    batch = make_batch("gpt2")
    with torch.no_grad():
        adapted = model(**batch).logits
    inducer.merge_and_unload(model).save_pretrained(tmp_path)
    from transformers import GPT2LMHeadModel

    with torch.no_grad():
        out = GPT2LMHeadModel.from_pretrained(tmp_path).eval()(**batch).logits
    torch.testing.assert_close(out, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("configs", "named"), [
    (lambda: [inducer.InducerConfig()], "inducer"),
    (lambda: [inducer.PrefixConfig(length=2)], "prefix"),
    (lambda: [inducer.AdapterConfig()], "adapter"),
    (lambda: [inducer.LoRAConfig(r=2), inducer.InducerConfig()], "inducer"),
])
def test_unmergeable_methods_are_refused_and_the_model_kept(configs, named):
    model = _trained("bert", configs())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"{named}.*cannot be merged"):
        inducer.merge_and_unload(model)
    assert inducer.runtime.adapter.adapter_state(model) is not None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
