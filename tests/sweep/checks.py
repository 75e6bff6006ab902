"""The sweep's checks: one method on one architecture's tiny model, every check the issue lists.

:func:`sweep_architecture` builds the model once and runs each method of :data:`METHODS` on a copy.
A method is ``refused`` when ``attach`` raises (the reason is kept, one line), ``pass`` when every
check that applies holds, ``fail`` otherwise (the failed checks are named). A check the unadapted
model itself does not satisfy (e.g. padding invariance of an architecture whose outputs depend on
padding) is not held against the method.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import inducer
import inducer.runtime.seams
from inducer.core.families import SkippedAttentionWarning, UnsupportedModelError
from inducer.runtime.adapter import adapter_state, added_parameter_names

from .architectures import Architecture


@dataclass(frozen=True)
class Method:
    """A method the sweep tries: its config and how to make it an identity (None: it has none)."""

    name: str
    config: Callable[[], object]
    zero: Callable[[torch.nn.Module], None] | None


def _zero_parameters(*suffixes: str) -> Callable[[torch.nn.Module], None]:
    def zero(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(suffixes):
                    parameter.zero_()
    return zero


METHODS: tuple[Method, ...] = (
    Method("inducer", lambda: inducer.InducerConfig(r_k=2, r_v=2),
           _zero_parameters("inducer.value_b", "inducer.value_b_bias")),
    Method("prefix", lambda: inducer.PrefixConfig(length=2), None),
    Method("lora", lambda: inducer.LoRAConfig(r=2, alpha=2, targets=["q", "k", "v", "o"]),
           _zero_parameters(".b")),
    Method("adapter", lambda: inducer.AdapterConfig(kind="houlsby", placement="attn", bottleneck=4),
           _zero_parameters("adapter_attn.up.weight", "adapter_attn.up.bias")),
    Method("bitfit", lambda: inducer.BitFitConfig(), None),
    # The feed-forward side: a bottleneck adapter after each FFN block, LoRA on its linear layers.
    Method("adapter-ffn", lambda: inducer.AdapterConfig(kind="houlsby", placement="ffn", bottleneck=4),
           _zero_parameters("adapter_ffn.up.weight", "adapter_ffn.up.bias")),
    Method("lora-ffn", lambda: inducer.LoRAConfig(r=2, alpha=2, targets=["ffn_in", "ffn_out"]),
           _zero_parameters(".b")),
)
CHECKS = ("acts", "gradient", "fused=reference", "padding", "cache", "save/load", "detach", "zero=base",
          "bf16")


@dataclass
class Outcome:
    """What one method did on one architecture."""

    status: str  # "pass", "refused" or "fail"
    reason: str = ""  # the refusal, or the failed checks
    warnings: list[str] = field(default_factory=list)  # SkippedAttentionWarning messages of attach
    paths: str = ""  # the attention path inducer's modules use, as attach chose it


def _inputs(arch: Architecture, lengths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Right-padded random token ids of the given lengths (ids 3.. avoid the special tokens)."""
    generator = torch.Generator().manual_seed(1)
    width = max(lengths)
    ids = torch.randint(3, 90, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch.kind == "seq2seq":
        batch["decoder_input_ids"] = torch.randint(3, 90, (len(lengths), 5), generator=generator)
    return batch


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """``a`` is finite and within ``tolerance`` of ``b``, relative to ``b``'s largest entry."""
    limit = tolerance * (1 + b.abs().max().item())
    return bool(torch.isfinite(a).all()) and (a - b).abs().max().item() <= limit


def _padding_holds(arch: Architecture, model) -> bool:
    """A sequence alone and right-padded next to a longer one give the same logits."""
    batch, alone = _inputs(arch, (6, 9)), _inputs(arch, (6,))
    alone = {k: v[:, :6] if k != "decoder_input_ids" else v for k, v in alone.items()}
    batch["input_ids"][0, :6] = alone["input_ids"][0]
    if arch.kind == "seq2seq":
        batch["decoder_input_ids"][0] = alone["decoder_input_ids"][0]
        return _close(_logits(model, batch)[:1], _logits(model, alone))
    return _close(_logits(model, batch)[:1, :6], _logits(model, alone))


def _cache_holds(arch: Architecture, model) -> bool:
    """The last token's logits from a cache of the others equal those of a full forward."""
    if arch.kind == "encoder":
        return True
    batch = _inputs(arch, (7,))
    key = "decoder_input_ids" if arch.kind == "seq2seq" else "input_ids"
    ids = batch.pop(key)
    batch.pop("attention_mask")
    with torch.no_grad():
        full = model(**batch, **{key: ids}).logits[:, -1].float()
        first = model(**batch, **{key: ids[:, :-1]}, use_cache=True)
        step = model(**batch, **{key: ids[:, -1:]}, past_key_values=first.past_key_values,
                     use_cache=True).logits[:, -1].float()
    return _close(step, full)


def _bf16_error(model, batch, reference: torch.Tensor) -> float:
    half = copy.deepcopy(model).to(torch.bfloat16)
    out = _logits(half, batch)
    return float("inf") if not torch.isfinite(out).all() else (out - reference).abs().max().item()


def _gradient_reaches_everything(model, batch) -> bool:
    """Every added tensor gets a gradient (so every added module acts); for methods that add none
    (BitFit), some trained tensor does (unused experts' biases of a mixture get none)."""
    model.zero_grad(set_to_none=True)
    model(**batch).logits.float().pow(2).mean().backward()
    params = dict(model.named_parameters())
    added = [params[n] for n in added_parameter_names(model, adapter_state(model))]
    trained = [p for p in model.parameters() if p.requires_grad]
    reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in (added or trained)]
    model.zero_grad(set_to_none=True)
    return all(reached) if added else any(reached)


def _attach(base, method: Method) -> tuple[torch.nn.Module | str, list[str]]:
    model = copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedAttentionWarning)
        try:
            inducer.attach(model, method.config(), train_head=False)
        except (UnsupportedModelError, ValueError, NotImplementedError) as error:
            return str(error).splitlines()[0], []
    skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedAttentionWarning)]
    torch.manual_seed(2)
    with torch.no_grad():  # far from any identity, so every check sees the method act
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model, skipped


def check_method(arch: Architecture, base, method: Method, base_holds: dict[str, bool]) -> Outcome:
    """Attach ``method`` to a copy of ``base`` and run every check; see the module docstring."""
    model, skipped = _attach(base, method)
    if isinstance(model, str):
        return Outcome("refused", model)
    batch = _inputs(arch, (6, 9))
    expected = _logits(base, batch)
    adapted = _logits(model, batch)
    # Models adapted only through seams report the reference path their seams use; the path
    # switch and its check are about registry modules.
    registry = any(impl in inducer.runtime.attention.NAMES
                   for impl in inducer.runtime.attention.current_implementations(model).values())
    path = inducer.attention_path(model) if registry else None
    paths = _paths(base, method, path) if path is not None else ""
    if path is None and inducer.runtime.seams.installed(model) and method.name in ("inducer", "prefix"):
        seam = next(s for m in model.modules() if (s := inducer.runtime.seams.seam_for(m)))
        paths = f"reference (seam {seam.name!r})"
    results = {"acts": not _close(adapted, expected, 1e-4),
               "gradient": _gradient_reaches_everything(model, batch),
               "padding": _padding_holds(arch, model), "cache": _cache_holds(arch, model)}
    if path is not None:  # None: the model's attention does not use the registry at all
        inducer.set_attention_path(model, "reference" if path == "fused" else "fused")
        results["fused=reference"] = _close(_logits(model, batch), adapted)
        inducer.set_attention_path(model, path)
    with tempfile.TemporaryDirectory() as folder:
        inducer.save_adapter(model, folder)
        loaded = inducer.load_adapter(copy.deepcopy(base), folder)
        results["save/load"] = torch.equal(_logits(loaded, batch), adapted)
    base_error = _bf16_error(base, batch, expected)
    error = _bf16_error(model, batch, adapted)
    results["bf16"] = error <= 4 * base_error + 2e-2 * (1 + adapted.abs().max().item())
    if method.zero is not None:
        zeroed = copy.deepcopy(model)
        method.zero(zeroed)
        results["zero=base"] = _close(_logits(zeroed, batch), expected, 1e-5)
    if not inducer.count_parameters(model).unfrozen:  # BitFit trains base biases: nothing to restore
        inducer.detach(model)
        results["detach"] = torch.equal(_logits(model, batch), expected)
    failed = [c for c in CHECKS if c in results and not results[c] and base_holds.get(c, True)]
    if failed:
        return Outcome("fail", ", ".join(failed), skipped, paths)
    return Outcome("pass", "", skipped, paths)


def _paths(base, method: Method, path: str) -> str:
    # Soft-capped attention always takes the reference path (the fused kernels cannot cap scores).
    softcap = getattr(base.config, "attn_logit_softcapping", None)
    if method.name in ("inducer", "prefix") and softcap is not None:
        return "reference (soft-capping)"
    return path


def sweep_architecture(arch: Architecture) -> dict[str, Outcome]:
    """Every method of :data:`METHODS` on ``arch``: its :class:`Outcome` by method name."""
    base = arch.build()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    base_holds = {"padding": _padding_holds(arch, base), "cache": _cache_holds(arch, base)}
    return {method.name: check_method(arch, base, method, base_holds) for method in METHODS}
