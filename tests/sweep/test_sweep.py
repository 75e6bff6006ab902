"""The sweep: every architecture of tests/sweep/architectures.py with every method of checks.py.

About half a minute on one thread. The support table in docs/model_support.md is generated from the
same results (``python -m tests.sweep --table``); the last test fails when it is out of date.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
import transformers
from packaging.version import Version

from .architectures import ARCHITECTURES, Architecture
from .checks import Outcome, sweep_architecture
from .report import DOC, markdown

ATTENTION_SIDE = ("inducer", "prefix")
# Architectures whose attention modules do not call transformers' attention registry at all and
# have no seam (inducer.runtime.seams): inducers and prefixes are refused there, at attach time.
NOT_ROUTED = {"DeBERTa-v2": "DisentangledSelfAttention", "RoFormer": "RoFormerSelfAttention",
              "Bloom": "BloomAttention"}
MIXTURES = ("Mixtral", "Qwen2-MoE", "gpt-oss")
# Architectures reached through a seam, by the seam's name: they use the reference path.
SEAMED = {"GPT-Neo": "gpt-neo-attn", "MPNet": "projections-forward", "Falcon": "sdpa-call"}
# ... until the transformers release whose code moved their attention into the registry, from which
# the registry hook reaches them (no seam, both paths).
SEAMED_UNTIL = {"Falcon": "5.25.0"}


def _through_seam(name: str) -> bool:
    until = SEAMED_UNTIL.get(name)
    return name in SEAMED and (until is None or Version(transformers.__version__) < Version(until))


@functools.cache
def _outcomes(name: str) -> dict[str, Outcome]:
    arch = next(a for a in ARCHITECTURES if a.name == name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sweep_architecture(arch)
    finally:
        torch.set_num_threads(threads)


def sweep_results() -> dict[str, dict[str, Outcome]]:
    """Every architecture's outcomes (each computed once per process)."""
    return {arch.name: _outcomes(arch.name) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_every_method_passes_or_is_refused_with_a_reason(arch: Architecture):
    outcomes = _outcomes(arch.name)
    failed = {m: o.reason for m, o in outcomes.items() if o.status == "fail"}
    assert not failed, f"{arch.name}: checks failed: {failed}"
    for method in ("lora", "adapter", "bitfit", "adapter-ffn"):
        assert outcomes[method].status == "pass", (method, outcomes[method].reason)
    if arch.name in MIXTURES:  # experts are no linear layers: LoRA's FFN roles are refused, saying so
        refused = outcomes["lora-ffn"]
        assert refused.status == "refused" and "mixture of experts" in refused.reason
    else:
        assert outcomes["lora-ffn"].status == "pass", outcomes["lora-ffn"].reason
    for method in ATTENTION_SIDE:
        outcome = outcomes[method]
        if arch.name in NOT_ROUTED:
            assert outcome.status == "refused"
            assert NOT_ROUTED[arch.name] in outcome.reason and "attention registry" in outcome.reason
        else:
            assert outcome.status == "pass", (method, outcome.reason)
        if _through_seam(arch.name):
            assert outcome.paths == f"reference (seam {SEAMED[arch.name]!r})"
        elif arch.name in SEAMED:  # moved into the registry: the fused path, checked against the reference
            assert outcome.paths == "fused", outcome  # passing includes fused=reference


def test_inducers_and_prefixes_pass_on_at_least_45_of_48_architectures():
    results = sweep_results()
    for method in ATTENTION_SIDE:
        passing = [name for name, outcomes in results.items() if outcomes[method].status == "pass"]
        assert len(passing) >= 45, (method, sorted(set(results) - set(passing)))


def test_partly_routed_models_say_which_modules_are_left_unadapted():
    # LongT5's encoder uses local attention, which does not call the registry; its decoder does.
    for method in ATTENTION_SIDE:
        (warning,) = _outcomes("LongT5")[method].warnings
        assert "LongT5LocalAttention" in warning and "left unadapted" in warning
    assert all(not o.warnings for name in ("BERT", "Llama") for o in _outcomes(name).values())


def test_soft_capped_models_use_the_reference_path():
    assert _outcomes("Gemma-2")["inducer"].paths == "reference (soft-capping)"
    assert _outcomes("Gemma-3")["inducer"].paths == "fused"  # no soft-capping by default


def test_the_support_table_is_up_to_date():
    generated_on = re.search(r"\(transformers\s+([0-9][^)]*)\)", DOC.read_text(encoding="utf-8")).group(1)
    if generated_on != transformers.__version__:  # make test-versions: the table records the lock's version
        pytest.skip(f"docs/model_support.md is generated on transformers {generated_on} (the lock's), "
                    f"this run has {transformers.__version__}")
    expected = markdown(sweep_results())
    assert DOC.read_text(encoding="utf-8") == expected, "run: python -m tests.sweep --table"
