"""Prefix-tuning (Li & Liang, ACL 2021), implemented inside attention.

Every chosen attention module gets ``length`` trainable key and value rows per key/value head. The
attention function (``inducer.attention``) prepends them to the keys and values it receives, i.e.
after the model's projections, rotary embedding and KV-cache update:

    Attn_i = softmax_j([scaling * Q_i . P_k ; scaling * Q_i . K_j + mask_ij]) @ [P_v ; V]

So the prefixes are never stored in the cache (cached decoding adds them again at every step),
every query sees every prefix position (the causal and padding masks apply to real keys only),
positions of real tokens are unchanged, and the method works for encoders, both stacks of
encoder-decoders (self- and cross-attention), grouped-query models (prefixes live on the key/value
heads), gradient checkpointing, and together with inducer-tuning (whose lambda then normalises over
the prefix keys too, which is the kernel view of spec section 1).

Parameters, for an adapted attention module at qualified name ``M`` (H_kv key/value heads, head dim p):

* flat (``reparam_hidden=None``): ``M.prefix.key`` and ``M.prefix.value``, each [H_kv, l, p].
* reparameterised (``reparam_hidden=h``, Li & Liang's training-time MLP): one shared encoder at the
  model root, ``prefix_encoder.embedding`` [l, d] -> ``prefix_encoder.hidden`` Linear(d, h) -> tanh,
  and per module ``M.prefix.output`` Linear(h, 2 * H_kv * p), whose output rows are laid out
  (key|value, head, channel). Li & Liang's single output layer of width ``layers * 2 * d`` is this
  one, block-partitioned by module: mathematically the same MLP.

Budget: ``count_parameters(model).added`` counts what is trained (the MLP when reparameterised). At
inference the MLP folds into flat prefixes, whose budget is ``l * 2 * H_kv * p`` per adapted module
(:func:`inference_parameters`). :func:`inducer.save_adapter` stores both forms, so
``inducer.load_adapter(base, dir)`` resumes training with the MLP and
``inducer.load_adapter(base, dir, inference=True)`` gives flat prefixes with identical outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..families import AttentionSite
from .base import (
    Applied,
    MethodConfig,
    add_child,
    check_choice,
    check_int,
    check_layers,
    register_method,
    select_sites,
)
from .extension import AttentionExtension

ENCODER_NAME = "prefix_encoder"  # the shared reparameterisation encoder, a child of the model root
CHILD_NAME = "prefix"  # the per-module prefix, a child of each adapted attention module


@register_method
@dataclass
class PrefixConfig(MethodConfig):
    """Settings of prefix-tuning.

    Args:
        length: number of prefix positions l (>= 1) per adapted attention module.
        reparam_hidden: hidden width h of Li & Liang's reparameterisation MLP (>= 1), used during
            training and folded into flat prefixes for inference; None trains flat prefixes.
        attention: ``"all"``, ``"self"`` or ``"cross"``: which attention modules get prefixes.
        layers: layer indices to adapt (None = all). As for InducerConfig, the index is the first
            number in a module's qualified name, so in encoder-decoders ``[0]`` adapts both stacks.
        init_std: std (>= 0) of the normal initialisation of the flat prefixes, or of the
            reparameterisation's embedding (its linear layers keep PyTorch's default
            initialisation, as in Li & Liang). 1.0 is ``nn.Embedding``'s default, used by Li & Liang
            and PEFT. 0 starts from zero prefixes: flat tensors are zero; with the MLP its output
            layer is zero and the embedding keeps std 1 (PEFT's ``init_weights="zero"``). Used by
            ``init="random"`` only.
        init: how the prefixes start (the initialisation study of spec section 1):
            ``"random"``: normal with ``init_std`` (above);
            ``"zero"``: zero prefix keys and values (the same as ``init_std=0``);
            ``"tokens"``: Li & Liang's real-word initialisation. The frozen model (dropout off, no
            prefixes) is run once on the token ids ``init_tokens`` (cycled or cut to ``length``
            positions: one sequence, no special tokens added, attention mask all ones; an
            encoder-decoder gets the same ids as decoder input), and each adapted module's prefix
            keys/values are the keys/values its attention function receives for those tokens, i.e.
            the module's key/value projections of its input hidden states (after rotary embedding
            where the model has one). Flat: the prefixes are those tensors. Reparameterised: the
            output layer of each module is set to the minimum-norm least-squares solution (bias 0)
            that maps the encoder's initial hidden states to them, so ``key_value()`` reproduces
            them exactly at step 0 whenever ``length <= reparam_hidden`` (the MLP's rows are then
            linearly independent); the embedding and hidden layer keep their random initialisation.
            On a parameter-free ("meta") model, as used for counting, no forward is run.
        init_tokens: token ids for ``init="tokens"`` (required there, refused otherwise), e.g.
            ``tokenizer("positive or negative movie review", add_special_tokens=False).input_ids``.
    """

    length: int = 16
    reparam_hidden: int | None = 512
    attention: Literal["all", "self", "cross"] = "all"
    layers: list[int] | None = None
    init_std: float = 1.0
    init: Literal["random", "zero", "tokens"] = "random"
    init_tokens: list[int] | None = None
    method: ClassVar[str] = "prefix"

    def __post_init__(self) -> None:
        check_int("PrefixConfig", "length", self.length, 1)
        if self.reparam_hidden is not None:
            check_int("PrefixConfig", "reparam_hidden", self.reparam_hidden, 1)
        check_choice("PrefixConfig", "attention", self.attention, ("all", "self", "cross"))
        self.layers = check_layers("PrefixConfig", self.layers)
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or not (
            self.init_std >= 0
        ):
            raise ValueError(f"PrefixConfig.init_std must be a float >= 0, got {self.init_std!r}")
        check_choice("PrefixConfig", "init", self.init, INITS)
        if self.init == "tokens":
            if not isinstance(self.init_tokens, (list, tuple)) or not self.init_tokens:
                raise ValueError(
                    "PrefixConfig.init_tokens must be a non-empty list of token ids when init='tokens' "
                    f"(e.g. tokenizer(words, add_special_tokens=False).input_ids), got {self.init_tokens!r}"
                )
            for token in self.init_tokens:
                check_int("PrefixConfig", "init_tokens[...]", token, 0)
            self.init_tokens = list(self.init_tokens)
        elif self.init_tokens is not None:
            raise ValueError(
                f"PrefixConfig.init_tokens is only used with init='tokens' (init is {self.init!r}); "
                "leave it None"
            )

    @property
    def zero_init(self) -> bool:
        """Whether the prefixes start at zero (``init="zero"``, or ``init="random"`` with std 0)."""
        return self.init == "zero" or (self.init == "random" and self.init_std == 0)

    def apply(self, model: nn.Module, sites: list[AttentionSite]) -> Applied:
        """Give every chosen attention module a ``prefix`` child (and the model a shared encoder)."""
        chosen = select_sites(sites, self.layers, self.attention, "PrefixConfig")
        applied = Applied()
        # A failure part-way (init="tokens" on a model that does not run) needs no cleanup here:
        # attach removes every module added during a failed attach.
        encoder = None
        if self.reparam_hidden is not None:
            encoder = PrefixEncoder(self, chosen[0].width, dtype=_dtype(chosen[0]))
            applied.modules.append(add_child(model, "", ENCODER_NAME, encoder, "PrefixConfig"))
        modules = []
        for site in chosen:
            module = PrefixModule(self, key_value_heads(site), site.head_dim, encoder, dtype=_dtype(site))
            applied.modules.append(add_child(model, site.name, CHILD_NAME, module, "PrefixConfig"))
            modules.append(site.module.get_submodule(CHILD_NAME))
        if self.init == "tokens":
            _init_from_tokens(model, modules, self.init_tokens, self.length)
        return applied

    def inference_config(self) -> PrefixConfig:
        """The config of the folded form: flat prefixes, no reparameterisation MLP."""
        return dataclasses.replace(self, reparam_hidden=None)


INITS = ("random", "zero", "tokens")


def token_key_values(model: nn.Module, modules: list[PrefixModule], tokens: list[int],
                     length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values, each [H_kv, length, p], that the attention function of each module in
    ``modules`` receives when the model (in eval mode, prefixes switched off) reads ``tokens``
    (cycled or cut to ``length``). What ``init="tokens"`` initialises the prefixes to."""
    reference = next(model.parameters())
    ids = torch.tensor([tokens[i % len(tokens)] for i in range(length)], device=reference.device)[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    was_training = model.training
    for module in modules:
        module._captured = ()
    try:
        model.eval()
        with torch.no_grad():
            model(**inputs)
        captured = [module._captured for module in modules]
    finally:
        for module in modules:
            module._captured = None
        model.train(was_training)
    missing = sum(1 for c in captured if not c)
    if missing:
        raise RuntimeError(f"PrefixConfig(init='tokens'): {missing} adapted attention module(s) did not run "
                           "when the model read the initialisation tokens")
    return captured


def _init_from_tokens(model: nn.Module, modules: list[PrefixModule], tokens: list[int], length: int) -> None:
    if next(model.parameters()).device.type == "meta":
        return  # a parameter-free twin (budget counting): nothing to compute
    targets = token_key_values(model, modules, tokens, length)
    with torch.no_grad():
        for module, (key, value) in zip(modules, targets, strict=True):
            if module._encoder is None:
                module.key.copy_(key)
                module.value.copy_(value)
                continue
            # output(hidden) = hidden @ W^T + b with b = 0: solve hidden @ W^T = target (min norm).
            hidden = module._encoder[0]().double()  # [l, h]
            target = torch.stack([key, value]).permute(2, 0, 1, 3).reshape(length, -1).double()
            solution = torch.linalg.pinv(hidden) @ target  # [h, 2 * H_kv * p]
            module.output.weight.copy_(solution.t())
            module.output.bias.zero_()


def _dtype(site: AttentionSite) -> torch.dtype:
    return next(site.projection.parameters()).dtype


def key_value_heads(site: AttentionSite) -> int:
    """Number of key/value heads of an attention module (fewer than query heads under GQA)."""
    module = site.module
    groups = getattr(module, "num_key_value_groups", None)
    if isinstance(groups, int) and groups > 0 and site.heads % groups == 0:
        return site.heads // groups
    for holder in (module, getattr(module, "config", None)):
        heads = getattr(holder, "num_key_value_heads", None)
        if isinstance(heads, int) and heads > 0:
            return heads
    return site.heads


class PrefixEncoder(nn.Module):
    """The shared part of Li & Liang's reparameterisation: ``tanh(Linear(d, h)(embedding))``."""

    def __init__(self, config: PrefixConfig, width: int, dtype: torch.dtype | None = None):
        super().__init__()
        std = config.init_std if config.init_std > 0 else 1.0
        self.embedding = nn.Parameter(torch.randn(config.length, width, dtype=dtype) * std)
        self.hidden = nn.Linear(width, config.reparam_hidden, dtype=dtype)

    def forward(self) -> torch.Tensor:
        """Hidden states of the prefix positions, shape [l, h]."""
        return torch.tanh(self.hidden(self.embedding))


class PrefixModule(AttentionExtension):
    """The prefixes of one attention module, and how they extend its keys, values and mask."""

    extends_keys = True

    def __init__(
        self,
        config: PrefixConfig,
        kv_heads: int,
        head_dim: int,
        encoder: PrefixEncoder | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = config
        self.kv_heads, self.head_dim, self.length = kv_heads, head_dim, config.length
        shape = (kv_heads, config.length, head_dim)
        std = 0.0 if config.zero_init else config.init_std
        if encoder is None:
            self.key = nn.Parameter(torch.randn(shape, dtype=dtype) * std)
            self.value = nn.Parameter(torch.randn(shape, dtype=dtype) * std)
            self._encoder = None
        else:
            self.output = nn.Linear(config.reparam_hidden, 2 * kv_heads * head_dim, dtype=dtype)
            if config.zero_init:
                nn.init.zeros_(self.output.weight)
                nn.init.zeros_(self.output.bias)
            # A plain reference, not a submodule: the encoder is registered once, at the model root,
            # and shared by every module (copy.deepcopy keeps the sharing through its memo).
            self._encoder = (encoder,)
        # Set to () by token_key_values to record the keys/values the attention function receives
        # (and to skip the prefixes) during one initialisation forward; None otherwise.
        self._captured: tuple | None = None

    def extra_repr(self) -> str:
        reparam = f", reparam_hidden={self.config.reparam_hidden}" if self._encoder else ""
        return f"kv_heads={self.kv_heads}, length={self.length}, head_dim={self.head_dim}{reparam}"

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys and values, each [H_kv, l, p] (through the MLP when reparameterised)."""
        if self._encoder is None:
            return self.key, self.value
        out = self.output(self._encoder[0]())  # [l, 2 * H_kv * p]
        out = out.view(self.length, 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)
        return out[0], out[1]

    def inference_tensors(self) -> dict[str, torch.Tensor]:
        """The flat prefixes the MLP folds into, ``{"key": ..., "value": ...}``; empty when flat.

        ``save_adapter`` stores them (as ``M.prefix.key`` / ``M.prefix.value``) next to the trained
        tensors, so ``load_adapter(..., inference=True)`` builds flat prefixes and needs no MLP.
        """
        if self._encoder is None:
            return {}  # the flat prefixes are the parameters themselves
        with torch.no_grad():
            key, value = self.key_value()
        return {"key": key, "value": value}

    def extend(
        self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prepend the prefixes to key/value (B, H_kv, M, p) and visible columns to an additive mask.

        ``mask`` is None or an additive mask (..., N, M) holding every masking the model applies
        (causal, padding, relative position bias); the prefix columns get 0: every query sees them.
        """
        if key.shape[1] != self.kv_heads or key.shape[-1] != self.head_dim:
            raise RuntimeError(
                f"inducer: attention got keys with {key.shape[1]} heads of dim {key.shape[-1]}, but "
                f"its prefixes were built for {self.kv_heads} x {self.head_dim} key/value heads"
            )
        if self._captured is not None:  # init="tokens": record what a prefix would be, add nothing
            self._captured = (key[0].detach().clone(), value[0].detach().clone())
            return key, value, mask
        prefix_key, prefix_value = self.key_value()
        batch = key.shape[0]
        prefix_key = prefix_key.to(key.dtype)[None].expand(batch, -1, -1, -1)
        prefix_value = prefix_value.to(value.dtype)[None].expand(batch, -1, -1, -1)
        key = torch.cat([prefix_key, key], dim=2)
        value = torch.cat([prefix_value, value], dim=2)
        if mask is not None:
            mask = torch.cat([mask.new_zeros(*mask.shape[:-1], self.length), mask], dim=-1)
        return key, value, mask


def inference_parameters(model: nn.Module) -> int:
    """Prefix parameters of ``model`` at inference (MLP folded): ``l * 2 * H_kv * p`` per module."""
    return sum(2 * m.kv_heads * m.length * m.head_dim for m in model.modules() if isinstance(m, PrefixModule))
