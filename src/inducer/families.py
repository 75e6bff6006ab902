"""Per-family facts about attention modules, kept as data (no copied forward code).

transformers 5 routes attention of every supported family through one registry; what differs is
small: where the module's output projection lives, which modules are cross-attention, and the
attribute names of the head geometry. Those facts are here and nowhere else.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

from torch import nn

# Class name of the module transformers passes to its attention function -> path of its output
# projection, relative to that module ("../" climbs to the parent).
OUTPUT_PROJECTION: dict[str, str] = {
    "BertSelfAttention": "../output.dense",
    "BertCrossAttention": "../output.dense",
    "RobertaSelfAttention": "../output.dense",
    "RobertaCrossAttention": "../output.dense",
    "GPT2Attention": "c_proj",
    "LlamaAttention": "o_proj",
    "MistralAttention": "o_proj",
    "Qwen2Attention": "o_proj",
    "Qwen3Attention": "o_proj",
    "BartAttention": "out_proj",
    "MBartAttention": "out_proj",
    "T5Attention": "o",
}
# Families above are tested; other modules that call the attention registry are tried with these
# projection names, in order, when the path resolves to a linear layer of the right width.
FALLBACK_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "o", "dense", "../output.dense")

CROSS_ATTENTION_CLASSES = {"BertCrossAttention", "RobertaCrossAttention"}
CROSS_ATTENTION_NAMES = {"encoder_attn", "EncDecAttention", "crossattention", "cross_attn"}

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim")

SUPPORTED = "BERT, RoBERTa, GPT-2, Llama/Mistral/Qwen, BART/mBART, T5, EncoderDecoderModel"


class UnsupportedModelError(ValueError):
    """The model has no attention module that inducer can adapt."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of a model, with the facts the methods need."""

    name: str
    module: nn.Module
    projection_name: str
    projection: nn.Module
    heads: int
    head_dim: int
    width: int
    layer: int | None
    is_cross: bool


def _calls_attention_registry(module: nn.Module) -> bool:
    return _class_calls_attention_registry(type(module))


@functools.cache
def _class_calls_attention_registry(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def _resolve(modules: dict[str, nn.Module], name: str, relative: str) -> tuple[str, nn.Module | None]:
    parts = name.split(".") if name else []
    while relative.startswith("../"):
        parts, relative = parts[:-1], relative[3:]
    full = ".".join(parts + relative.split("."))
    return full, modules.get(full)


def _width(projection: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(projection, nn.Linear):
        return projection.in_features, projection.out_features
    if type(projection).__name__ == "Conv1D":
        return projection.weight.shape[0], projection.nf
    return None


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Every attention module of ``model`` that calls transformers' attention registry.

    Raises :class:`UnsupportedModelError` naming the supported families when there is none, or
    when an attention module's output projection or head geometry cannot be found.
    """
    modules = dict(model.named_modules())
    sites = []
    for name, module in modules.items():
        cls = type(module).__name__
        known = cls in OUTPUT_PROJECTION
        if not known and not _calls_attention_registry(module):
            continue
        config = getattr(module, "config", None)
        heads = _first_attr(module, HEAD_COUNT_ATTRS) or getattr(config, "num_attention_heads", None)
        head_dim = _first_attr(module, HEAD_DIM_ATTRS)
        candidates = (OUTPUT_PROJECTION[cls],) if known else FALLBACK_PROJECTIONS
        found = None
        for relative in candidates:
            proj_name, proj = _resolve(modules, name, relative)
            shape = _width(proj) if proj is not None else None
            if shape is not None and (head_dim is None or heads is None or shape[0] == heads * head_dim):
                found = proj_name, proj, shape
                break
        if found is None or heads is None:
            if known:
                raise UnsupportedModelError(f"{cls} at {name!r}: output projection or head count not found")
            continue  # a module that mentions the registry but is not an attention module we know
        proj_name, proj, (in_features, width) = found
        head_dim = head_dim or in_features // heads
        is_cross = (
            cls in CROSS_ATTENTION_CLASSES
            or bool(getattr(module, "is_cross_attention", False))
            or any(part in CROSS_ATTENTION_NAMES for part in name.split("."))
        )
        sites.append(AttentionSite(name, module, proj_name, proj, heads, head_dim, width,
                                   _layer_index(name), is_cross))
    if not sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no attention module routed through transformers' attention "
            f"registry was found. Supported families: {SUPPORTED} (and other transformers 5 models "
            "whose attention calls ALL_ATTENTION_FUNCTIONS)."
        )
    return sites
