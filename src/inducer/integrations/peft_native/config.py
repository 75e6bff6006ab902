"""``InducerPeftConfig``: inducer-tuning as a PEFT config (``peft_type`` ``"INDUCER"``).

Its inducer fields are :class:`~inducer.InducerConfig`'s, with the same names and defaults, so
``get_peft_model(model, InducerPeftConfig(r_k=2, r_v=4))`` adapts a model exactly as
``inducer.attach(model, InducerConfig(r_k=2, r_v=4))`` does. ``with_methods`` composes it with any
other inducer method in the same adapter (LoRA on the query, the MAM / bottleneck adapters,
Kernel-mix), stored as those methods' own config dicts; ``inducer=False`` leaves the inducer out, which
is how the methods PEFT lacks (Houlsby / Pfeiffer / parallel adapters, Kernel-mix, MAM) become PEFT
adapters too. PEFT's own fields (``task_type``, ``inference_mode``, ``modules_to_save``,
``trainable_token_indices``) mean what they mean for every PEFT method.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from peft import PeftConfig

from ...errors import ConfigError
from ...io.atomic import sha256_file
from ...methods import METHOD_CONFIGS, PRESETS, MethodConfig
from ...methods.inducer_tuning import InducerConfig
from .checks import PEFT_WEIGHTS, check_peft_folder
from .registration import PEFT_TYPE

# The InducerConfig fields this config mirrors (its own names and defaults).
INDUCER_FIELDS = tuple(f.name for f in dataclasses.fields(InducerConfig))
__all__ = ["INDUCER_FIELDS", "InducerPeftConfig"]


@dataclass
class InducerPeftConfig(PeftConfig):
    """PEFT config of inducer-tuning (Chen et al., EMNLP 2022) and its compositions.

    Args (inducer): as :class:`~inducer.InducerConfig`: ``r_k``, ``r_v``, ``value_extension``,
        ``composition``, ``shared_value_basis``, ``use_lambda``, ``init_std``, ``init``, ``layers``
        (layer indices, None = all) and ``attention`` (``"all"``, ``"self"``, ``"cross"``).
    Args (composition):
        inducer: False leaves the inducer out (an adapter of ``with_methods`` only).
        with_methods: other inducer method configs in the same adapter, as their ``to_dict()``
            (``{"method": "lora", "r": 4, "targets": ["q"]}``); :meth:`from_methods` builds it.
    Args (PEFT's): ``task_type``, ``inference_mode``, ``modules_to_save`` (base modules trained and
        saved in full: a classification head), ``trainable_token_indices``.
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
    inducer: bool = True
    with_methods: list[dict] = field(default_factory=list)
    modules_to_save: list[str] | None = None
    trainable_token_indices: list[int] | dict | None = None
    # Integrity (inducer's format rules, kept in PEFT's layout): the base model's fingerprint, recorded
    # at injection and checked at every load; the weights' SHA-256, recorded by save_pretrained.
    base_model_fingerprint: dict | None = None
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if not isinstance(self.inducer, bool):
            raise ConfigError(f"InducerPeftConfig.inducer must be True or False, got {self.inducer!r}")
        self.method_configs()  # validates every field now, not at get_peft_model

    @classmethod
    def from_methods(cls, configs, **peft_fields) -> InducerPeftConfig:
        """The PEFT config of an inducer adapter made of ``configs`` (method configs, a list of them
        or a preset's choice: ``inducer.preset("inducer+lora", r_k=2, r_v=4, r=4)``); at most one
        :class:`~inducer.InducerConfig` among them. ``peft_fields``: ``task_type`` and the like."""
        configs = getattr(configs, "configs", configs)
        configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
        inducers = [c for c in configs if isinstance(c, InducerConfig)]
        if len(inducers) > 1:
            raise ConfigError("InducerPeftConfig.from_methods: one PEFT adapter holds at most one "
                              "InducerConfig")
        others = [c.to_dict() for c in configs if not isinstance(c, InducerConfig)]
        fields = dataclasses.asdict(inducers[0]) if inducers else {}
        return cls(**fields, inducer=bool(inducers), with_methods=others, **peft_fields)

    @classmethod
    def from_preset(cls, name: str, **sizes_and_peft_fields) -> InducerPeftConfig:
        """:meth:`from_methods` of the preset ``name`` (``"inducer+lora"``, ``"inducer+mam"``,
        ``"adapter"``... see ``inducer.PRESETS``) at the paper's sizes, the given ones replacing them
        (``r_k=2, r_v=4, r=4``); PEFT's fields (``task_type``...) pass through. Budget search needs a
        model: ``from_methods(inducer.preset(name, model, budget=...))``."""
        peft_keys = {f.name for f in dataclasses.fields(PeftConfig)} | {"modules_to_save",
                                                                        "trainable_token_indices"}
        peft_fields = {k: v for k, v in sizes_and_peft_fields.items() if k in peft_keys}
        sizes = {k: v for k, v in sizes_and_peft_fields.items() if k not in peft_keys}
        if name not in PRESETS:
            raise ConfigError(f"InducerPeftConfig.from_preset: unknown preset {name!r}; choose one of "
                              f"{sorted(PRESETS)}")
        spec = PRESETS[name]
        unknown = set(sizes) - set(spec.sizes) - {"layers"}
        if unknown:
            raise ConfigError(f"preset {name!r} has no size(s) {sorted(unknown)}; its sizes: "
                              f"{sorted(spec.sizes)}")
        return cls.from_methods(spec.build(**{**spec.sizes, **sizes}), **peft_fields)

    def method_configs(self) -> list[MethodConfig]:
        """The inducer method configs this adapter attaches, in order (the inducer first); each
        validated by its class, errors as :class:`~inducer.errors.ConfigError`."""
        configs: list[MethodConfig] = []
        if self.inducer:
            configs.append(InducerConfig(**{name: getattr(self, name) for name in INDUCER_FIELDS}))
        if not isinstance(self.with_methods, (list, tuple)):
            raise ConfigError("InducerPeftConfig.with_methods must be a list of method config dicts")
        for entry in self.with_methods:
            cls = METHOD_CONFIGS.get(entry.get("method")) if isinstance(entry, dict) else None
            if cls is None or cls is InducerConfig:
                known = sorted(set(METHOD_CONFIGS) - {"inducer"})
                raise ConfigError(f"InducerPeftConfig.with_methods: {entry!r} is not a method config dict "
                                  f"with 'method' one of {known}")
            configs.append(cls.from_dict(entry))
        if not configs:
            raise ConfigError("InducerPeftConfig: inducer=False needs at least one entry in with_methods")
        return configs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """PEFT's, after refusing a local adapter folder that would be unpickled or fails its checks
        (:func:`~inducer.integrations.peft_native.formats.check_peft_folder`): ``PeftModel`` and
        ``AutoPeftModel*`` read the config through here before they touch the model."""
        path = Path(pretrained_model_name_or_path, subfolder or "")
        shapes = check_peft_folder(path) if path.is_dir() else None
        config = super().from_pretrained(os.fspath(pretrained_model_name_or_path), subfolder=subfolder,
                                         **kwargs)
        # Checked against the model at injection, before it changes (not a field: never saved).
        config._checked_tensors = shapes
        return config

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """PEFT's, recording the SHA-256 of the ``adapter_model.safetensors`` that ``PeftModel`` /
        transformers wrote into ``save_directory`` just before (PEFT writes the weights first)."""
        weights = Path(save_directory, PEFT_WEIGHTS)
        self.weights_sha256 = sha256_file(weights) if weights.is_file() else None
        super().save_pretrained(save_directory, **kwargs)
