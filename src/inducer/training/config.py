"""``TrainConfig``: every training option, its default and its help text, declared once.

Kept free of heavy imports (no torch, no transformers) so that the command line can build its options
from these fields (``dataclasses.fields(TrainConfig)``, each field's ``metadata["help"]``) without
loading a deep-learning stack first. ``__post_init__`` checks every option and names the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import ConfigError

PRECISIONS = ("no", "fp16", "bf16")


def _option(default, help_text: str):
    """A dataclass field with its ``--help`` text (read by the command line and by ``help_texts``)."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Training knobs (``inducer train --help`` documents each; recipes set them by these names)."""

    lr: float = _option(2e-4, "peak learning rate")
    batch_size: int = _option(16, "training batch size")
    eval_batch_size: int = _option(64, "evaluation batch size")
    grad_accum: int = _option(1, "gradient accumulation steps")
    epochs: float = _option(3.0, "training epochs (fractions allowed)")
    max_steps: int | None = _option(None, "optimizer steps (overrides --epochs)")
    warmup_ratio: float = _option(0.06, "warmup as a fraction of the steps")
    warmup_steps: int | None = _option(None, "warmup steps (overrides --warmup-ratio)")
    weight_decay: float = _option(0.1, "AdamW weight decay")
    adam_betas: tuple[float, float] = _option((0.9, 0.999), "AdamW's two moment decay rates, each in [0, 1)")
    adam_eps: float = _option(1e-8, "AdamW's epsilon (added to the denominator), > 0")
    max_grad_norm: float | None = _option(1.0, "clip the gradient norm to this (none: no clipping)")
    max_length: int = _option(128, "max input (or source) tokens")
    max_target_length: int = _option(64, "max target tokens (generation)")
    seed: int = _option(42, "random seed")
    precision: str = _option("no", "no / fp16 / bf16")
    gradient_checkpointing: bool = _option(False, "gradient checkpointing")
    label_smoothing: float = _option(0.0, "label smoothing")
    eval_every: int | None = _option(None, "evaluate every N steps (default: each epoch)")
    save_every: int | None = _option(None, "checkpoint for --resume every N steps")
    log_every: int = _option(10, "log the training loss every N optimizer steps")
    patience: int | None = _option(None, "early stopping: evaluations without improvement")
    select_metric: str | None = _option(None, "validation metric for model selection")
    max_train_examples: int | None = _option(None, "use at most N training rows")
    max_eval_examples: int | None = _option(None, "use at most N validation / test rows")
    num_beams: int = _option(1, "beam size for generation (1 = greedy)")
    max_new_tokens: int | None = _option(None, "max generated tokens")
    train_head: bool = _option(
        True, "train a new task head (--freeze-head: freeze it, the released NLU code's choice)"
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in (
            "batch_size",
            "eval_batch_size",
            "grad_accum",
            "max_length",
            "max_target_length",
            "log_every",
            "num_beams",
        ):
            _check_count(name, getattr(self, name), optional=False)
        for name in (
            "max_steps",
            "patience",
            "eval_every",
            "save_every",
            "max_train_examples",
            "max_eval_examples",
            "max_new_tokens",
        ):
            _check_count(name, getattr(self, name), optional=True)
        if self.warmup_steps is not None and (not _is_int(self.warmup_steps) or self.warmup_steps < 0):
            raise ConfigError(
                f"warmup_steps must be an integer >= 0 (or None: use warmup_ratio), got {self.warmup_steps!r}"
            )
        _check_positive("lr", self.lr)
        _check_positive("epochs", self.epochs)
        _check_positive("adam_eps", self.adam_eps)
        if self.max_grad_norm is not None:
            _check_positive("max_grad_norm", self.max_grad_norm, "or None: no clipping")
        _check_fraction("label_smoothing", self.label_smoothing)
        _check_fraction("warmup_ratio", self.warmup_ratio)
        if not _is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be a number >= 0 (0: no decay), got {self.weight_decay!r}")
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else None
        if betas is None or len(betas) != 2:
            raise ConfigError(
                f"adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {self.adam_betas!r}"
            )
        for beta in betas:
            _check_fraction("adam_betas", beta)
        self.adam_betas = betas

    @classmethod
    def field_names(cls) -> set[str]:
        """Names a recipe's ``training`` section may set."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        """Each option's ``--help`` text, by field name."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (an infinite learning rate or weight decay is as wrong as nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_count(name: str, value, optional: bool) -> None:
    """``value`` must be an integer >= 1 (or None where ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < 1:
        alternative = " (or None: no limit / the default)" if optional else ""
        raise ConfigError(f"{name} must be an integer >= 1{alternative}, got {value!r}")


def _check_positive(name: str, value, alternative: str = "") -> None:
    if not _is_number(value) or not value > 0:
        extra = f" ({alternative})" if alternative else ""
        raise ConfigError(f"{name} must be a number > 0{extra}, got {value!r}")


def _check_fraction(name: str, value) -> None:
    """``value`` must lie in [0, 1)."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
