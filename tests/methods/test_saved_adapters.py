"""Adapters saved by an earlier inducer still load, with the same outputs.

The folders under ``tests/fixtures/adapters/<family>/`` were written once by :func:`write_fixture`
(run ``python -m tests.methods.test_saved_adapters`` from the repository root to rewrite them, which
is only right when the adapter format changes on purpose). Each holds an inducer + prefix-tuning +
LoRA adapter of a tiny random model from ``tests/conftest.py`` (``make_model(family)``, its seed 0),
whose added tensors were set to seeded noise (seed 1234) so that every method changes the output,
and ``expected.safetensors`` with the batch (``make_batch(family)``, seed 1) and the logits the
adapted model gave on it. Loading the folder must give those logits again: the tensor names,
shapes and semantics of the saved format must not drift.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inducer
from tests.conftest import make_batch, make_model

FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "adapters"
FAMILIES = ("bert", "gpt2", "llama")


def fixture_configs() -> list:
    """The methods of every fixture adapter: inducer, reparameterised prefixes and LoRA."""
    return [
        inducer.InducerConfig(r_k=2, r_v=2),
        inducer.PrefixConfig(length=2, reparam_hidden=4),
        inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"]),
    ]


def write_fixture(family: str, root: Path = FIXTURE_ROOT) -> Path:
    """Write the adapter folder of ``family`` and its expected logits (see the module docstring)."""
    model = make_model(family)
    inducer.attach(model, fixture_configs())
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _name, param in sorted(model.named_parameters()):
            if param.requires_grad:  # every added tensor (and a task head)
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    folder = inducer.save_adapter(model, root / family)
    batch = make_batch(family)
    with torch.no_grad():
        logits = model(**batch).logits
    save_file({**batch, "logits": logits.contiguous()}, str(folder / "expected.safetensors"))
    return folder


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_adapter_loads_with_its_logits(family: str, inference: bool):
    folder = FIXTURE_ROOT / family
    expected = load_file(str(folder / "expected.safetensors"))
    model = inducer.load_adapter(make_model(family), folder, inference=inference)
    batch = {k: v for k, v in expected.items() if k != "logits"}
    with torch.no_grad():
        logits = model(**batch).logits
    base = make_model(family)(**batch).logits
    assert not torch.allclose(base, expected["logits"], atol=1e-3)  # the adapter does change outputs
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    for name in FAMILIES:
        print(write_fixture(name))
