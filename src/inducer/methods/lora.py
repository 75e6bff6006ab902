"""LoRA (Hu et al. 2022): a low-rank update of chosen linear layers, ``W x + (alpha / r) B A x``.

Targets are roles resolved per family (``"q"``, ``"k"``, ``"v"``, ``"o"``, ``"ffn_in"``,
``"ffn_out"``) or shell-style patterns over qualified module names (``"*.q_proj"``). The update is
a forward hook on the layer, so fused projections work too: LoRA on GPT-2's ``"q"`` adapts only the
query third of ``c_attn``. ``inducer.merge`` folds the update into the weight for inference.

Tensors, row-vector convention (``x @ a @ b``): ``X.lora.a`` [in, r], ``X.lora.b`` [r, out_slice]
for a layer at ``X`` (``X.lora_q`` etc. when a fused layer's slice is targeted).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.families import AttentionSite
from ..core.linear_targets import LinearTarget, attention_role_targets, find_feed_forward_sites, linear_target
from ..core.naming import DEFAULT_ADAPTER, split_slot
from ..errors import AdapterFormatError, ConfigError, UnsupportedModelError
from .base import (
    Applied,
    MethodConfig,
    PresetSpec,
    adapter_dtype,
    add_child,
    check_choice,
    check_int,
    check_layers,
    register_method,
    register_presets,
)
from .low_rank import AddLowRankUpdate, child_name
from .peft_conversion import PeftConversion, PeftInteropError, register_peft

ATTENTION_ROLES = ("q", "k", "v", "o")
FFN_ROLES = ("ffn_in", "ffn_out")


def resolve_targets(
    model: nn.Module, sites: list[AttentionSite], targets: list[str], layers: list[int] | None,
    attention: str, owner: str,
) -> list[LinearTarget]:
    """Linear layers named by roles or name patterns, filtered by layer and attention kind."""
    modules = dict(model.named_modules())
    found: dict[tuple[str, int], LinearTarget] = {}
    for target in targets:
        matches = []
        if target in ATTENTION_ROLES:
            for site in sites:
                if (attention == "self" and site.is_cross) or (attention == "cross" and not site.is_cross):
                    continue
                matches.append(attention_role_targets(modules, site, target))
        elif target in FFN_ROLES:
            for ffn in find_feed_forward_sites(model):
                names = ffn.first if target == "ffn_in" else (ffn.last,)
                if not any(names):  # a mixture of experts: its experts are no linear layers
                    raise UnsupportedModelError(
                        f"{owner}.targets: {target!r}: the feed-forward block at {ffn.name!r} is a "
                        "mixture of experts without linear layers to adapt; target attention roles "
                        "(q, k, v, o) on this model")
                matches += [linear_target(modules, name, target) for name in names]
        else:
            matches = [t for name in fnmatch.filter(modules, target)
                       if (t := linear_target(modules, name)) is not None]
            if not matches:
                raise ConfigError(f"{owner}.targets: pattern {target!r} matches no linear layer "
                                 f"(roles: {ATTENTION_ROLES + FFN_ROLES})")
        for t in matches:
            if layers is None or t.layer in layers:
                found[(t.name, t.slice_start, t.rows)] = t
    if not found:
        raise ConfigError(f"{owner}(targets={targets}, layers={layers}) matches no linear layer")
    return list(found.values())


@register_method
@dataclass
class LoRAConfig(MethodConfig):
    """LoRA settings.

    Args:
        r: rank (>= 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the LoRA input (training only).
        targets: roles (``q k v o ffn_in ffn_out``) or shell patterns over module names.
        layers: layer indices to adapt (None = all).
        attention: for attention roles, ``"all"``, ``"self"`` or ``"cross"`` modules.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    layers: list[int] | None = None
    attention: Literal["all", "self", "cross"] = "all"
    method: ClassVar[str] = "lora"

    def __post_init__(self) -> None:
        check_int("LoRAConfig", "r", self.r, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"LoRAConfig.alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.targets
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"LoRAConfig.targets must be a non-empty list of roles "
                             f"{ATTENTION_ROLES + FFN_ROLES} or module-name patterns, got {targets!r}")
        self.targets = list(self.targets)
        self.layers = check_layers("LoRAConfig", self.layers)
        check_choice("LoRAConfig", "attention", self.attention, ("all", "self", "cross"))

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Give every target layer a ``lora`` child and a hook adding its update."""
        applied = Applied()
        for target in resolve_targets(model, sites, self.targets, self.layers, self.attention, "LoRAConfig"):
            # Created in float32 for half-precision or quantized layers (QLoRA), cast at use.
            module = LoRAModule(target, self.r, self.alpha, self.dropout, dtype=adapter_dtype(target.module))
            name = child_name("lora", target)
            applied.modules.append(add_child(model, target.name, name, module, "LoRAConfig", adapter=adapter))
            AddLowRankUpdate(module).register(target.module)
        return applied


def lora_on_query(r: int, layers: list[int] | None = None) -> LoRAConfig:
    """The paper's LoRA on the query projection only (spec section 4), as the inducer combos use it."""
    return LoRAConfig(r=r, alpha=32, dropout=0.1, targets=["q"], layers=layers)


register_presets(PresetSpec(
    "lora", "LoRA (Hu et al.) on the query and value projections, alpha = 2r",
    lambda r, layers=None: [LoRAConfig(r=r, alpha=2 * r, targets=["q", "v"], layers=layers)],
    {"r": 8}, {"r": range(1, 257)}))


class LoRAModule(nn.Module):
    """``a`` [in, r] (Kaiming-uniform, as PEFT) and ``b`` [r, out] (zero): starts as the base layer."""

    def __init__(self, target: LinearTarget, r: int, alpha: float, dropout: float, dtype=None):
        super().__init__()
        self.start, self.stop, self.out_features = target.slice_start, target.slice_stop, target.out_features
        # Non-contiguous outputs (a role of a per-head fused q/k/v layer): their indices, else None.
        self.rows = target.rows
        self.is_conv1d = target.is_conv1d
        self.scale = alpha / r
        self.dropout = dropout
        a = torch.empty(r, target.in_features, dtype=dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's init of lora_A.weight [r, in]
        self.a = nn.Parameter(a.t().contiguous())
        self.b = nn.Parameter(torch.zeros(r, target.size, dtype=dtype))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense [in, out_slice] matrix (row-vector convention)."""
        return (self.a @ self.b) * self.scale

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output change for input ``x``, padded to the layer's full output width."""
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self._place((x.to(self.a.dtype) @ self.a @ self.b) * self.scale)

    def _place(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` (..., out_slice) in the layer's outputs it changes, zero elsewhere."""
        if self.rows is None:
            return F.pad(delta, (self.start, self.out_features - self.stop))
        full = delta.new_zeros(*delta.shape[:-1], self.out_features)
        return full.index_copy(-1, self.row_index(delta.device), delta)

    def _shape(self) -> tuple:
        return (self.start, self.stop, self.rows, self.out_features, self.a.shape, self.b.shape,
                self.a.dtype, self.dropout, self.training, self.merged)

    @staticmethod
    def routed_update(modules: list[LoRAModule], index: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """The updates of several adapters' LoRAs of one layer for a routed batch ``x`` (B, ..., in):
        row b uses ``modules[index[b]]`` (nothing where ``index`` is -1), one batched product with
        each row's gathered A and B. None when their shapes differ or one is merged."""
        first = modules[0]
        shape = first._shape()
        if first.merged or any(module._shape() != shape for module in modules[1:]):
            return None
        pick = index.clamp(min=0)
        a = torch.stack([module.a for module in modules])[pick]  # (B, in, r)
        b = torch.stack([module.b for module in modules])[pick]  # (B, r, out_slice)
        scale = torch.tensor([module.scale for module in modules], dtype=a.dtype, device=a.device)[pick]
        scale = scale * (index >= 0).to(a.dtype)  # rows no adapter serves get no update
        x = F.dropout(x, p=first.dropout, training=first.training).to(a.dtype)
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
        delta = torch.bmm(torch.bmm(rows, a), b) * scale[:, None, None]
        return first._place(delta.reshape(*x.shape[:-1], -1))

    def row_index(self, device=None) -> torch.Tensor:
        """Indices of the layer outputs this update changes."""
        if self.rows is None:
            return torch.arange(self.start, self.stop, device=device)
        return torch.tensor(self.rows, device=device)

    def _add_to_weight(self, layer: nn.Module, sign: float) -> None:
        delta = sign * self.delta_weight().to(layer.weight.dtype)  # [in, out_slice]
        index = self.row_index(layer.weight.device)
        if self.is_conv1d:  # weight [in, out]
            layer.weight.index_add_(1, index, delta)
        else:  # weight [out, in]
            layer.weight.index_add_(0, index, delta.T)

    @torch.no_grad()
    def merge(self, layer: nn.Module) -> None:
        """Add the update to ``layer``'s weight (the hook then skips it)."""
        if not self.merged:
            self._add_to_weight(layer, 1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self, layer: nn.Module) -> None:
        """Subtract the update again (equal to the original weight up to rounding)."""
        if self.merged:
            self._add_to_weight(layer, -1.0)
            self.merged = False


# --- PEFT conversion (LORA) -----------------------------------------------------------------------
# A slice of a fused projection (GPT-2's query third of c_attn) becomes a LoRA of the whole layer
# whose other rows are zero.

PEFT_NAME_PREFIX = "base_model.model."


def to_peft(model: nn.Module, config: LoRAConfig,
            adapter: str = DEFAULT_ADAPTER) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT's ``LORA`` adapter (config, ``lora_A`` / ``lora_B`` tensors) of the LoRA modules that the
    adapter ``adapter`` added to a model (other adapters' are left out)."""
    # Gather each layer's LoRA modules (several when slices of a fused layer are adapted) and
    # stack them into one PEFT LoRA of rank sum(r): A = [a_1 .. a_k]^T, B = the b's placed in
    # their output rows. The scale alpha / r must survive PEFT's alpha / (k r): alpha becomes k alpha.
    per_layer: dict[str, list[LoRAModule]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRAModule) and split_slot(name.rpartition(".")[2])[1] == adapter:
            per_layer.setdefault(name.rpartition(".")[0], []).append(module)
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    conv1d = {m.is_conv1d for modules in per_layer.values() for m in modules}
    if len(conv1d) > 1:
        raise PeftInteropError("export_peft: PEFT's fan_in_fan_out is one flag per adapter; this LoRA "
                               "targets both GPT-2-style Conv1D and nn.Linear layers")
    for layer, modules in per_layer.items():
        a = torch.cat([m.a.detach().T for m in modules])  # [k r, in]
        b = torch.zeros(modules[0].out_features, a.shape[0], dtype=a.dtype)
        offset = 0
        for m in modules:
            b[m.row_index(), offset:offset + m.b.shape[0]] = m.b.detach().T
            offset += m.b.shape[0]
        tensors[f"{PEFT_NAME_PREFIX}{layer}.lora_A.weight"] = a
        tensors[f"{PEFT_NAME_PREFIX}{layer}.lora_B.weight"] = b
        if len(modules) > 1:
            rank_pattern[layer] = a.shape[0]
            alpha_pattern[layer] = config.alpha * len(modules)
    model_config = getattr(model, "config", None)
    peft_config = {
        "peft_type": "LORA", "task_type": None, "r": config.r, "lora_alpha": config.alpha,
        "lora_dropout": config.dropout, "target_modules": sorted(per_layer),
        "fan_in_fan_out": conv1d.pop(),
        "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "modules_to_save": None,
        "inference_mode": True, "revision": None,
        "base_model_name_or_path": getattr(model_config, "_name_or_path", None) or None,
    }
    return peft_config, tensors


def _pattern_value(patterns: dict, name: str, default):
    # PEFT matches rank/alpha patterns against the end of a module's name.
    for pattern, value in patterns.items():
        if name == pattern or name.endswith(f".{pattern}"):
            return value
    return default


def from_peft(base: nn.Module, config: dict, tensors: dict[str, torch.Tensor]):
    """LoRA configs (one per distinct rank and alpha) for a plain PEFT ``LORA`` adapter, and their loader."""
    for flag, bad in (("use_dora", True), ("use_rslora", True), ("lora_bias", True)):
        if config.get(flag) == bad:
            raise PeftInteropError(f"import_peft: PEFT LoRA with {flag}=true is not supported")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise PeftInteropError("import_peft: PEFT LoRA with trained biases or modules_to_save is not "
                               "supported")
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_NAME_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterFormatError(f"import_peft: unexpected tensor {key!r} in a PEFT LoRA adapter")
        layer, part = key[len(PEFT_NAME_PREFIX):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        weights.setdefault(layer, {})[part] = tensor
    modules = dict(base.named_modules())
    groups: dict[tuple[int, float], list[str]] = {}
    for layer, parts in weights.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise AdapterFormatError(f"import_peft: {layer} lacks lora_A or lora_B")
        if layer not in modules:
            raise PeftInteropError(f"import_peft: the adapter targets {layer!r}, which this model lacks "
                                   "(an adapter for another base model?)")
        r = _pattern_value(config.get("rank_pattern") or {}, layer, config.get("r"))
        alpha = _pattern_value(config.get("alpha_pattern") or {}, layer, config.get("lora_alpha"))
        if parts["lora_A"].shape[0] != r:
            raise AdapterFormatError(f"import_peft: {layer}.lora_A has rank {parts['lora_A'].shape[0]}, "
                                     f"the config says {r}")
        groups.setdefault((r, alpha), []).append(layer)
    dropout = config.get("lora_dropout", 0.0)
    configs = [LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=sorted(layers))
               for (r, alpha), layers in groups.items()]

    def load(model: nn.Module) -> None:
        adapted = dict(model.named_modules())
        for layer, parts in weights.items():
            module = adapted[layer].lora
            if module.a.shape != parts["lora_A"].T.shape or module.b.shape != parts["lora_B"].T.shape:
                raise AdapterFormatError(f"import_peft: {layer} LoRA shapes {tuple(parts['lora_A'].shape)}, "
                                         f"{tuple(parts['lora_B'].shape)} do not fit the layer")
            with torch.no_grad():
                module.a.copy_(parts["lora_A"].T)
                module.b.copy_(parts["lora_B"].T)

    return configs, load


register_peft(PeftConversion(LoRAConfig.method, "LORA", to_peft, from_peft))
