"""The modules of prefix-tuning: the per-attention prefixes, the shared reparameterisation encoder,
and their initialisation from real tokens (see the package docstring)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ...core import families
from ...core.families import AttentionSite
from ..base import adapter_dtype
from ..extension import AttentionExtension


class PrefixSizes(Protocol):
    """What the modules read of a :class:`~inducer.methods.prefix_tuning.PrefixConfig` (a protocol, so
    that this module does not import the one that imports it)."""

    length: int
    reparam_hidden: int | None
    init_std: float

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


def init_from_tokens(model: nn.Module, modules: list[PrefixModule], tokens: list[int], length: int) -> None:
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


def site_dtype(site: AttentionSite) -> torch.dtype:
    """The dtype of a site's prefix tensors (float32 on a half-precision base; cast at use)."""
    return adapter_dtype(site.projection)


def key_value_heads(site: AttentionSite) -> int:
    """Number of key/value heads of an attention module (fewer than query heads under GQA)."""
    return families.key_value_heads(site.module, site.heads)


class PrefixEncoder(nn.Module):
    """The shared part of Li & Liang's reparameterisation: ``tanh(Linear(d, h)(embedding))``."""

    def __init__(self, config: PrefixSizes, width: int, dtype: torch.dtype | None = None):
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
        config: PrefixSizes,
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
