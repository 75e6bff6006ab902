"""Inducer-tuning (Chen et al., EMNLP 2022): one query-dependent inducer per query, per head.

For query Q_i of head h (row vectors, spec section 2):

    P_k,i = Q_i + tanh(Q_i key_a + key_a_bias) key_b + key_b_bias        (virtual key)
    s_i   = scaling * Q_i . P_k,i
    lam_i = sigmoid(s_i - LSE_i)         LSE_i: log-sum-exp of Q_i's masked scores over real keys
    z_i   = tanh(Q_i value_a + value_a_bias)
    E_i   = sum_h lam_i^h z_i^h value_b^h + value_b_bias                  (added after W_o)

``lam`` is exactly the weight prefix-tuning would give a single prefix at P_k,i. At initialisation
P_k ~= Q (the inducer sits next to its query, so lam is large and gradients flow) and E ~= 0 (the
model starts as the pretrained one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.families import AttentionSite
from ..core.kernels import as_dtype, compute_dtype
from ..core.naming import DEFAULT_ADAPTER
from ..errors import ConfigError
from .base import (
    Applied,
    MethodConfig,
    MethodHook,
    PresetSpec,
    adapter_dtype,
    add_child,
    check_choice,
    check_int,
    check_layers,
    register_method,
    register_presets,
    select_sites,
)
from .extension import AttentionExtension, routed_row_index

INITS = ("paper", "lora", "lora-value", "lora-key")


@register_method
@dataclass
class InducerConfig(MethodConfig):
    """Settings of inducer-tuning; defaults are the paper's method (except ``init``: see below), other
    values its ablations.

    Args:
        r_k: bottleneck of the key MLP (>= 0). 0 means no key MLP: the virtual key is the query.
        r_v: bottleneck of the value MLP (>= 1).
        value_extension: add the value after the output projection (E, width d). False adds a
            per-head value of width p to each head's output before the projection instead.
        composition: ``"residual"`` keeps the attention as is and adds lam-weighted values;
            ``"gated"`` is exact prefix-tuning gating, ``(1 - lam) * Attn + lam * value``.
        shared_value_basis: one ``value_b`` for all heads (extended value only).
        use_lambda: False is the "no lambda" ablation (multi-head adapter): values weigh 1.
        init_std: std of the truncated (at 2 std) normal initialisation of every inducer tensor
            that ``init`` leaves to the paper's scheme.
        init: ``"lora"`` (the default since issue 27) or ``"paper"``, the paper's initialisation:
            every tensor ~ N(0, init_std) truncated at 2 std (spec section 2); pass it to reproduce the
            paper (the recipes and the CLI use the default). ``"lora"``: LoRA-style, A (``key_a``,
            ``value_a``) uniform in +-1/sqrt(p) (LoRA's Kaiming-uniform bound), every bias and B
            (``key_b``, ``value_b``) zero, so at step 0 P_k = Q and E = 0 exactly and B gets a full
            gradient. ``"lora-value"`` and ``"lora-key"`` apply it to that path only (the other path
            keeps the paper's init). The default because it beat ``"paper"`` on validation at the demo's
            scale over 5 seeds (``benchmarks/results/quality_demo_study.md``), on the full split and on
            SmolLM2 x e2e-synthetic. Adapters saved without the field were made with ``"paper"``.
        b_lr_ratio: learning-rate multiplier of the second factors (``key_b``, ``value_b`` and their
            biases), as LoRA+ gives LoRA's B a larger rate than A. Optimisation only: the function
            and the adapter's tensors are unchanged (the trainer reads each tensor's ``lr_scale``).
        layers: layer indices to adapt (None = all). The index is the first number in a module's
            qualified name, so in encoder-decoders ``[0]`` adapts layer 0 of both stacks.
        attention: ``"all"``, ``"self"`` or ``"cross"``: which attention modules to adapt.
    """

    r_k: int = 2
    r_v: int = 4
    value_extension: bool = True
    composition: Literal["residual", "gated"] = "residual"
    shared_value_basis: bool = False
    use_lambda: bool = True
    init_std: float = 0.01
    init: Literal["paper", "lora", "lora-value", "lora-key"] = "lora"
    b_lr_ratio: float = 1.0
    layers: list[int] | None = None
    attention: Literal["all", "self", "cross"] = "all"
    method: ClassVar[str] = "inducer"

    def __post_init__(self) -> None:
        check_int("InducerConfig", "r_k", self.r_k, 0)
        check_int("InducerConfig", "r_v", self.r_v, 1)
        for flag in ("value_extension", "shared_value_basis", "use_lambda"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"InducerConfig.{flag} must be True or False, got {getattr(self, flag)!r}")
        check_choice("InducerConfig", "composition", self.composition, ("residual", "gated"))
        check_choice("InducerConfig", "attention", self.attention, ("all", "self", "cross"))
        check_choice("InducerConfig", "init", self.init, INITS)
        if not isinstance(self.init_std, (int, float)) or not self.init_std > 0:
            raise ConfigError(f"InducerConfig.init_std must be a float > 0, got {self.init_std!r}")
        if type(self.b_lr_ratio) not in (int, float) or not self.b_lr_ratio > 0:  # bool is no number here
            raise ConfigError(f"InducerConfig.b_lr_ratio must be a number > 0, got {self.b_lr_ratio!r}")
        self.layers = check_layers("InducerConfig", self.layers)
        if self.shared_value_basis and not self.value_extension:
            raise ConfigError(
                "InducerConfig.shared_value_basis=True needs value_extension=True (the shared basis "
                "maps to the model width d)"
            )
        if self.composition == "gated" and not self.use_lambda:
            raise ConfigError("InducerConfig.composition='gated' needs use_lambda=True (the gate is lam)")

    @classmethod
    def from_dict(cls, data: dict) -> InducerConfig:
        """As :meth:`MethodConfig.from_dict`; a config saved before ``init`` existed was the paper's."""
        return super().from_dict({"init": "paper", **data})

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Give every chosen attention module an ``inducer`` child; hook its output projection."""
        chosen = select_sites(sites, self.layers, self.attention, "InducerConfig")
        applied = Applied()
        for site in chosen:
            dtype = adapter_dtype(site.projection)  # float32 on a half-precision base, cast at use
            module = InducerModule(self, site.heads, site.head_dim, site.width, dtype=dtype)
            applied.modules.append(add_child(model, site.name, "inducer", module, "InducerConfig",
                                             adapter=adapter))
            if self.value_extension:
                AddExtendedValue(module).register(site.projection)
        return applied


register_presets(PresetSpec(
    "inducer", "inducer-tuning (Chen et al. 2022): a query-dependent inducer per query and head",
    lambda r_k, r_v, layers=None: [InducerConfig(r_k=r_k, r_v=r_v, layers=layers)],
    {"r_k": 6, "r_v": 4}, {"r_k": range(0, 65), "r_v": range(1, 129)},
    removed_at_zero=("r_k",)))  # r_k=0: no key MLP at all (the virtual key is the query)


def heads_first(tensor: torch.Tensor) -> torch.Tensor:
    """(B, H, N, ...) -> (H, B * N, ...), a view of transformers' (B, N, H, p) query layout."""
    batch, heads, length = tensor.shape[:3]
    if batch == 1:  # cached decoding of one sequence: no reshape needed
        return tensor[0]
    return tensor.transpose(0, 1).reshape(heads, batch * length, *tensor.shape[3:])


def batch_first(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`heads_first`: (H, B * N, ...) -> (B, H, N, ...)."""
    if batch == 1:
        return tensor[None]
    heads, rows = tensor.shape[:2]
    return tensor.reshape(heads, batch, rows // batch, *tensor.shape[2:]).transpose(0, 1)


class InducerModule(AttentionExtension):
    """The trainable tensors of one attention module's inducers, and the inducer math.

    An attention extension that composes the output from each query's log-sum-exp.

    Tensor names and shapes are the adapter format (``docs/format.md``). H = query heads,
    p = head dim, d = model width.
    """

    def __init__(self, config: InducerConfig, heads: int, head_dim: int, width: int, dtype=None):
        super().__init__()
        self.config = config
        self.heads, self.head_dim, self.width = heads, head_dim, width
        H, p, d, r_k, r_v = heads, head_dim, width, config.r_k, config.r_v

        lora_key = config.init in ("lora", "lora-key")
        lora_value = config.init in ("lora", "lora-value")

        def param(*shape: int, lora: str | None = None) -> nn.Parameter:
            """A tensor at the paper's init, or (``lora`` = "a" / "zero") at the LoRA-style one."""
            tensor = torch.empty(*shape, dtype=dtype)
            if lora == "a":  # LoRA's bound: Kaiming-uniform with a=sqrt(5) gives 1/sqrt(fan_in)
                nn.init.uniform_(tensor, -1 / math.sqrt(p), 1 / math.sqrt(p))
            elif lora == "zero":
                nn.init.zeros_(tensor)
            else:
                std = config.init_std
                nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
            return nn.Parameter(tensor)

        # init="paper" makes the same draws in the same order as before the option existed.
        key_a, zero_k = ("a", "zero") if lora_key else (None, None)
        value_a, zero_v = ("a", "zero") if lora_value else (None, None)
        if config.use_lambda and r_k > 0:
            self.key_a, self.key_a_bias = param(H, p, r_k, lora=key_a), param(H, r_k, lora=zero_k)
            self.key_b, self.key_b_bias = param(H, r_k, p, lora=zero_k), param(H, p, lora=zero_k)
        self.value_a, self.value_a_bias = param(H, p, r_v, lora=value_a), param(H, r_v, lora=zero_v)
        if not config.value_extension:
            self.value_b, self.value_b_bias = param(H, r_v, p, lora=zero_v), param(H, p, lora=zero_v)
        elif config.shared_value_basis:
            self.value_b, self.value_b_bias = param(r_v, d, lora=zero_v), param(d, lora=zero_v)
        else:
            self.value_b, self.value_b_bias = param(H, r_v, d, lora=zero_v), param(d, lora=zero_v)
        if config.b_lr_ratio != 1.0:  # read by inducer.training.optimization.parameter_groups
            for name, tensor in self.named_parameters():
                if name.startswith(("key_b", "value_b")):
                    tensor.lr_scale = float(config.b_lr_ratio)
        # E waits here between the attention function and the output projection's hook. It is
        # set and consumed within one forward of the attention module, so gradient checkpointing
        # (which re-runs that forward) and cached decoding see a fresh value every time.
        self._pending_value: torch.Tensor | None = None
        # Read-out of lam for analysis (no global state): while ``record_lam`` is True, every forward
        # of this module leaves its lam, detached, (B, H, N) in ``last_lam`` (before dropout; all ones
        # with use_lambda=False). Padded query positions are included: mask them when averaging.
        self.record_lam = False
        # A list to append (heads-first query, pre-tanh first layers) to at every call; None: off.
        self.record_preactivations: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_lam: torch.Tensor | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"heads={self.heads}, head_dim={self.head_dim}, width={self.width}, r_k={c.r_k}, "
                f"r_v={c.r_v}, value_extension={c.value_extension}, composition={c.composition}")

    needs_lse = True

    def check_query(self, query: torch.Tensor) -> None:
        """Refuse queries whose heads or head dim differ from those the inducers were built for."""
        if query.shape[1] != self.heads or query.shape[-1] != self.head_dim:
            raise RuntimeError(
                f"inducer: attention got {query.shape[1]} heads of dim {query.shape[-1]}, "
                f"but its inducer was built for {self.heads} x {self.head_dim}"
            )

    def _first_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and the value MLPs' first layers side by side: (H, p, r_k + r_v), (H, r_k + r_v).
        Both read the same query, so one batched matmul computes them."""
        if hasattr(self, "key_a"):
            return (torch.cat([self.key_a, self.value_a], -1),
                    torch.cat([self.key_a_bias, self.value_a_bias], -1))
        return self.value_a, self.value_a_bias

    def _first_layers(self, q: torch.Tensor) -> torch.Tensor:
        """tanh of :meth:`_first_weight`'s layers, (H, R, r_k + r_v), for heads-first ``q`` (H, R, p)."""
        weight, bias = self._first_weight()
        pre = torch.baddbmm(as_dtype(bias, q.dtype)[:, None, :], q, as_dtype(weight, q.dtype))
        if self.record_preactivations is not None:  # a read-out for studies, like record_lam
            self.record_preactivations.append((q.detach(), pre.detach()))
        return torch.tanh(pre)

    def _key_score(self, q: torch.Tensor, hidden: torch.Tensor, scaling: float) -> torch.Tensor:
        """s = scaling * Q . P_k, (H, R), from heads-first queries and :meth:`_first_layers`."""
        r_k = hidden.shape[-1] - self.config.r_v
        virtual_key = q
        if r_k:
            virtual_key = q + torch.baddbmm(as_dtype(self.key_b_bias, q.dtype)[:, None, :], hidden[..., :r_k],
                                            as_dtype(self.key_b, q.dtype))
        return scaling * torch.linalg.vecdot(q, virtual_key)

    def virtual_key_score(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """s = scaling * Q . P_k with P_k = Q + key MLP(Q); shape (B, H, N), float32 or wider."""
        q = heads_first(as_dtype(query, compute_dtype(query)))
        return batch_first(self._key_score(q, self._first_layers(q), scaling), query.shape[0])

    def compose(
        self,
        query: torch.Tensor,
        attn_out: torch.Tensor,
        lse: torch.Tensor,
        scaling: float,
        dropout: float,
        training: bool,
    ) -> torch.Tensor:
        """Combine the model's attention output (B, H, N, p) with the inducers.

        Returns the new per-head output; with an extended value, E (B, N, d) is left for the output
        projection's hook (:meth:`take_pending_value`). Computed in float32 (or wider) whatever the
        activations' and the tensors' dtypes, heads first (:func:`heads_first`), so that each
        per-head product is one batched matmul: cached decoding runs this for every layer and token.
        """
        c = self.config
        batch = query.shape[0]
        dtype = compute_dtype(query)
        q = heads_first(as_dtype(query, dtype))  # (H, R = B * N, p)
        hidden = self._first_layers(q)
        z = hidden[..., hidden.shape[-1] - c.r_v:]  # (H, R, r_v)
        if c.use_lambda:
            lam = torch.sigmoid(self._key_score(q, hidden, scaling) - heads_first(lse))
        else:
            lam = torch.ones(q.shape[:-1], dtype=dtype, device=query.device)
        if self.record_lam:
            self.last_lam = batch_first(lam, batch).detach()
        # The module's attention-probability dropout applies to lam too, as to every other weight.
        weight = lam
        if c.use_lambda and training and dropout > 0:
            weight = heads_first(F.dropout(batch_first(lam, batch), p=dropout, training=True))
        if c.composition == "gated":
            attn_out = attn_out * (1.0 - batch_first(lam, batch))[..., None].to(attn_out.dtype)
        value_b, value_b_bias = as_dtype(self.value_b, dtype), as_dtype(self.value_b_bias, dtype)
        if not c.value_extension:
            value = torch.baddbmm(value_b_bias[:, None, :], z, value_b) * weight[..., None]
            self.hold_value(None)
            return attn_out + batch_first(value, batch).to(attn_out.dtype)
        weighted = z * weight[..., None]
        if c.shared_value_basis:
            extended = torch.addmm(value_b_bias, weighted.sum(0), value_b)
        else:  # sum over heads and r_v at once: (R, H * r_v) @ (H * r_v, d)
            extended = torch.addmm(value_b_bias, weighted.transpose(0, 1).reshape(q.shape[1], -1),
                                   value_b.reshape(-1, value_b.shape[-1]))
        self.hold_value(extended.view(batch, -1, extended.shape[-1]))
        return attn_out

    def _shape(self) -> tuple:
        c = self.config
        return (c.r_k, c.r_v, c.value_extension, c.composition, c.shared_value_basis, c.use_lambda,
                hasattr(self, "key_a"), self.value_a.dtype, self.record_lam)

    @classmethod
    def compose_routed(cls, items: list, query: torch.Tensor, attn_out: torch.Tensor, lse: torch.Tensor,
                       scaling: float, dropout: float, training: bool) -> torch.Tensor | None:
        """:meth:`compose` of several inducers (``(module, rows)`` pairs, disjoint rows) at once: each
        row gathers its own inducer's tensors, one batched pass for all. None when their shapes
        differ (the caller then composes them one by one); rows no inducer serves are unchanged."""
        modules = [module for module, _ in items]
        first = modules[0]
        shape = first._shape()
        if first.record_lam or any(module._shape() != shape for module in modules[1:]):
            return None
        c, batch = first.config, query.shape[0]
        index = routed_row_index(items, batch, query.device)
        pick, covered = index.clamp(min=0), (index >= 0).view(-1, 1, 1, 1)
        dtype = compute_dtype(query)

        def gathered(tensors) -> torch.Tensor:  # (A, ...) stacked, then each row's: (B, ...)
            return as_dtype(torch.stack(list(tensors))[pick], dtype)

        q = as_dtype(query, dtype)  # (B, H, N, p)
        weights, biases = zip(*(module._first_weight() for module in modules), strict=True)
        hidden = torch.tanh(q @ gathered(weights) + gathered(biases)[:, :, None, :])
        r_k = hidden.shape[-1] - c.r_v
        z = hidden[..., r_k:]
        if c.use_lambda:
            virtual_key = q
            if r_k:
                virtual_key = q + hidden[..., :r_k] @ gathered(m.key_b for m in modules) + gathered(
                    m.key_b_bias for m in modules)[:, :, None, :]
            lam = torch.sigmoid(scaling * torch.linalg.vecdot(q, virtual_key) - lse)
        else:
            lam = torch.ones(q.shape[:-1], dtype=dtype, device=query.device)
        weight = lam
        if c.use_lambda and training and dropout > 0:
            weight = F.dropout(lam, p=dropout, training=True)
        if c.composition == "gated":
            attn_out = torch.where(covered, attn_out * (1.0 - lam)[..., None].to(attn_out.dtype), attn_out)
        value_b = gathered(m.value_b for m in modules)
        value_b_bias = gathered(m.value_b_bias for m in modules)
        if not c.value_extension:
            value = (z @ value_b + value_b_bias[:, :, None, :]) * weight[..., None]
            for module in modules:
                module.hold_value(None)
            return torch.where(covered, attn_out + value.to(attn_out.dtype), attn_out)
        weighted = z * weight[..., None]  # (B, H, N, r_v)
        if c.shared_value_basis:
            extended = weighted.sum(1) @ value_b
        else:
            heads, length = weighted.shape[1], weighted.shape[2]
            extended = torch.bmm(weighted.transpose(1, 2).reshape(batch, length, -1),
                                 value_b.reshape(batch, heads * c.r_v, -1))
        extended = (extended + value_b_bias[:, None, :]) * covered.view(-1, 1, 1).to(dtype)
        for module in modules:  # one E for all: AddExtendedValue.routed adds it once
            module.hold_value(extended)
        return attn_out

    def hold_value(self, value: torch.Tensor | None) -> None:
        """Keep E for the output projection's hook (a plain attribute: nn.Module's __setattr__,
        which checks parameters, buffers and modules, costs more than the rest of a decoding step's E)."""
        self.__dict__["_pending_value"] = value

    def take_pending_value(self) -> torch.Tensor:
        """Hand E to the output projection's hook, once."""
        value = self._pending_value
        self.hold_value(None)
        if value is None:
            raise RuntimeError(
                "inducer: the output projection ran without its attention having computed the "
                "inducer value. Was the model's attention implementation changed after "
                "inducer.attach? Use inducer.set_attention_path(model, ...) instead."
            )
        return value


class AddExtendedValue(MethodHook):
    """Forward hook on an attention's output projection: adds the inducer's extended value E."""

    def __init__(self, inducer: InducerModule):
        self.inducer = inducer

    def __call__(self, _projection, _inputs, output):
        return output + as_dtype(self.inducer.take_pending_value(), output.dtype)

    @classmethod
    def routed(cls, items: list, _projection, _inputs, output):
        """Several routed adapters' E at once: :meth:`InducerModule.compose_routed` left one E (zero
        on the rows none of them serves) in all of their inducers. None when it did not."""
        pending = [hook.inducer._pending_value for hook, _ in items]
        if pending[0] is None or any(value is not pending[0] for value in pending):
            return None
        for hook, _ in items:
            hook.inducer.hold_value(None)
        return output + as_dtype(pending[0], output.dtype)
