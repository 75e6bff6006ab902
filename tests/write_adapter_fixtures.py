"""Write the format-2 adapter fixtures of ``tests/fixtures/adapters_v2/`` (run from the repository root:
``python -m tests.write_adapter_fixtures``).

They were written once, by the inducer of commit 2e0434a (before adapters were keyed by name), so that
``tests/io/test_adapter_fixtures_v2.py`` proves adapters saved by that code still load to the same logits.
Rewriting them is only right when the adapter format changes on purpose (bump ``FORMAT_VERSION``, keep
these as the old version's fixtures and write new ones elsewhere).

Each case is a tiny random model of ``tests/conftest.py`` (``make_model(family)``: seed 0) with one
adapter, or two named ones, whose trainable tensors are set to seeded noise (seed 1234, in parameter
name order) so that every method changes the output. A case folder holds one adapter folder per
adapter (``<adapter>/``: ``adapter_config.json`` + ``adapter-<hash>.safetensors``) and
``expected.safetensors``: the batch (``make_batch(family)``, seed 1) and the logits with each adapter
active (``logits.<adapter>``), plus, for two adapters, those of the batch routed row by row
(``logits.routed``, routes in ``manifest.json``). ``manifest.json`` lists every case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

import inducer
from inducer.methods.lora import lora_on_query
from tests.conftest import make_batch, make_model

ROOT = Path(__file__).resolve().parent / "fixtures" / "adapters_v2"


def cases() -> dict[str, dict]:
    """Case name -> family, adapters (name -> method configs) and routes (two adapters only)."""
    return {
        "bert-inducer-lora-adapter": {"family": "bert", "adapters": {"default": [
            inducer.InducerConfig(r_k=2, r_v=2),
            inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"]),
            inducer.AdapterConfig(kind="houlsby", bottleneck=2)]}},
        "bert-bitfit": {"family": "bert", "adapters": {"default": [inducer.BitFitConfig()]}},
        "gpt2-prefix-lora": {"family": "gpt2", "adapters": {"default": [
            inducer.PrefixConfig(length=2, reparam_hidden=4),
            inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"])]}},
        "llama-kernelmix-bitfit": {"family": "llama", "adapters": {"default": [
            inducer.KernelMixConfig(r=2), inducer.BitFitConfig()]}},
        # The paper's "inducer + MAM" combo preset (inducer, LoRA on the query, parallel FFN adapter).
        "llama-inducer-mam-combo": {"family": "llama", "adapters": {"default": [
            inducer.InducerConfig(r_k=2, r_v=2), lora_on_query(2),
            inducer.AdapterConfig(kind="parallel", bottleneck=2, scale=2.0, placement="ffn")]}},
        "t5-prefix-encoder-inducer": {"family": "t5", "adapters": {"default": [
            inducer.PrefixConfig(length=2, reparam_hidden=4), inducer.InducerConfig(r_k=2, r_v=2)]}},
        "t5-mam": {"family": "t5", "adapters": {"default": [
            inducer.MAMConfig(prefix_length=2, reparam_hidden=4, bottleneck=2)]}},
        # Two named adapters on one base, neither of them "default": their modules were renamed in the
        # model (``inducer__sst2``) and saved under the plain names.
        "gpt2-two-adapters": {"family": "gpt2", "routes": ["mnli", "sst2", None], "adapters": {
            "sst2": [inducer.InducerConfig(r_k=2, r_v=2)],
            "mnli": [inducer.PrefixConfig(length=2, reparam_hidden=4),
                     inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"])]}},
        # "default" plus a named adapter with the same method.
        "bert-default-and-named": {"family": "bert", "routes": ["b", None, "default"], "adapters": {
            "default": [inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"])],
            "b": [inducer.LoRAConfig(r=2, alpha=4, targets=["q", "v"]),
                  inducer.InducerConfig(r_k=2, r_v=2)]}},
    }


def write_case(name: str, case: dict, root: Path = ROOT) -> dict:
    """Write one case folder (see the module docstring); returns its manifest entry."""
    family = case["family"]
    model = make_model(family)
    generator = torch.Generator().manual_seed(1234)
    for adapter, configs in case["adapters"].items():
        inducer.attach(model, configs, name=adapter)
        inducer.set_adapter(model, adapter)  # only its tensors (and the head) are trainable now
        with torch.no_grad():
            for _param_name, param in sorted(model.named_parameters()):
                if param.requires_grad:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    # attach leaves the modules it adds in training mode (dropout on: LoRA-q's 0.1) on an eval model.
    model.eval()
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    batch = make_batch(family)
    expected = dict(batch)
    for adapter in case["adapters"]:
        inducer.save_adapter(model, folder / adapter, name=adapter)
        inducer.set_adapter(model, adapter)
        with torch.no_grad():
            expected[f"logits.{adapter}"] = model(**batch).logits.contiguous()
    if "routes" in case:
        with torch.no_grad(), inducer.route(model, case["routes"]):
            expected["logits.routed"] = model(**batch).logits.contiguous()
    save_file(expected, str(folder / "expected.safetensors"))
    return {"family": family, "adapters": list(case["adapters"]), "routes": case.get("routes"),
            "methods": {a: [c.method for c in configs] for a, configs in case["adapters"].items()}}


def main() -> None:
    """Rewrite every case and the manifest."""
    ROOT.mkdir(parents=True, exist_ok=True)
    manifest = {name: write_case(name, case) for name, case in cases().items()}
    (ROOT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {len(manifest)} cases to {ROOT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
