"""Prefix-tuning's config and how it is applied (see the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from ...core.families import AttentionSite
from ...core.naming import DEFAULT_ADAPTER
from ...errors import ConfigError
from ..base import (
    Applied,
    MethodConfig,
    PresetSpec,
    add_child,
    check_choice,
    check_int,
    check_layers,
    register_method,
    register_presets,
    select_sites,
)
from .module import (
    INITS,
    PrefixEncoder,
    PrefixModule,
    init_from_tokens,
    key_value_heads,
    site_dtype,
)

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
            raise ConfigError(f"PrefixConfig.init_std must be a float >= 0, got {self.init_std!r}")
        check_choice("PrefixConfig", "init", self.init, INITS)
        if self.init == "tokens":
            if not isinstance(self.init_tokens, (list, tuple)) or not self.init_tokens:
                raise ConfigError(
                    "PrefixConfig.init_tokens must be a non-empty list of token ids when init='tokens' "
                    f"(e.g. tokenizer(words, add_special_tokens=False).input_ids), got {self.init_tokens!r}"
                )
            for token in self.init_tokens:
                check_int("PrefixConfig", "init_tokens[...]", token, 0)
            self.init_tokens = list(self.init_tokens)
        elif self.init_tokens is not None:
            raise ConfigError(
                f"PrefixConfig.init_tokens is only used with init='tokens' (init is {self.init!r}); "
                "leave it None"
            )

    @property
    def zero_init(self) -> bool:
        """Whether the prefixes start at zero (``init="zero"``, or ``init="random"`` with std 0)."""
        return self.init == "zero" or (self.init == "random" and self.init_std == 0)

    def apply(self, model: nn.Module, sites: list[AttentionSite], adapter: str = DEFAULT_ADAPTER) -> Applied:
        """Give every chosen attention module a ``prefix`` child (and the model a shared encoder)."""
        chosen = select_sites(sites, self.layers, self.attention, "PrefixConfig")
        applied = Applied()
        # A failure part-way (init="tokens" on a model that does not run) needs no cleanup here:
        # attach removes every module added during a failed attach.
        encoder = None
        if self.reparam_hidden is not None:
            encoder = PrefixEncoder(self, chosen[0].width, dtype=site_dtype(chosen[0]))
            applied.modules.append(add_child(model, "", ENCODER_NAME, encoder, "PrefixConfig",
                                             adapter=adapter))
        modules = []
        for site in chosen:
            module = PrefixModule(self, key_value_heads(site), site.head_dim, encoder, dtype=site_dtype(site))
            name = add_child(model, site.name, CHILD_NAME, module, "PrefixConfig", adapter=adapter)
            applied.modules.append(name)
            modules.append(model.get_submodule(name))
        if self.init == "tokens":
            init_from_tokens(model, modules, self.init_tokens, self.length)
        return applied

    def inference_config(self) -> PrefixConfig:
        """The config of the folded form: flat prefixes, no reparameterisation MLP."""
        return dataclasses.replace(self, reparam_hidden=None)


register_presets(PresetSpec(
    "prefix",
    "prefix-tuning (Li & Liang): l prefix keys/values per attention, MLP-reparameterised in training",
    lambda length, layers=None: [PrefixConfig(length=length, layers=layers)],
    {"length": 16}, {"length": range(1, 513)}))

__all__ = ["CHILD_NAME", "ENCODER_NAME", "PrefixConfig"]
