"""Shared helpers of the integration tests: a tiny base model saved to a folder, a tiny LM dataset,
and a fresh Python process that reloads an adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from ..conftest import make_model

RELOAD_SCRIPT = """
import json, sys, torch, inducer
torch.set_num_threads(1)
model = inducer.from_pretrained(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(input_ids=ids).logits
torch.save(logits, sys.argv[3])
"""


def saved_base(family: str, folder: Path):
    """Save a tiny ``family`` model to ``folder``; return it loaded back, so it records that folder as
    its ``name_or_path`` (what a hub or local base does)."""
    import transformers

    model = make_model(family)
    model.save_pretrained(folder)
    return getattr(transformers, type(model).__name__).from_pretrained(folder).eval()


def perturb(model, seed: int, scale: float = 0.1):
    """Move every trainable tensor off its init (zero LoRA B, near-identity inducers) so a round
    trip that lost the adapter, or an update, shows in the outputs; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)
    return model


def lm_rows(count: int = 8, length: int = 6, seed: int = 0) -> list[dict]:
    """Causal-LM training rows (input_ids and labels) of a tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 90, (count, length), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def logits_in_fresh_process(adapter_dir: Path, ids: torch.Tensor, out: Path) -> torch.Tensor:
    """The logits that ``inducer.from_pretrained(adapter_dir)`` gives in a new Python process."""
    result = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(adapter_dir), json.dumps(ids.tolist()),
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)
