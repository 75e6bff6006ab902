"""The trainer's optimizer: AdamW with weight decay (not on biases and normalisation weights) and a
linear warmup then linear decay to 0; and activation checkpointing."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from .config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters: decayed, and not (biases, normalisation weights).

    A parameter with an ``lr_scale`` attribute (set by a method, e.g. ``InducerConfig.b_lr_ratio``,
    LoRA+-style) trains at ``lr * lr_scale``: it gets a group of its own per scale (only when ``lr`` is
    given). Without such parameters the groups are the two above, as always."""
    # The usual convention (BERT, the HF Trainer): no decay on biases and normalisation weights.
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or "norm" in name.lower())
        scale = float(getattr(p, "lr_scale", 1.0)) if lr is not None else 1.0
        groups.setdefault((decayed, scale), []).append(p)
    out = []
    for (decayed, scale), params in groups.items():
        if scale != 1.0 and not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if scale != 1.0:
            group["lr"] = lr * scale
        out.append(group)
    return out


def build_optimizer(model: nn.Module, config: TrainConfig, total_steps: int):
    """``(AdamW, LambdaLR)`` for ``model``'s trainable parameters over ``total_steps`` steps."""
    groups = parameter_groups(model, config.weight_decay, config.lr)
    if not any(g["params"] for g in groups):
        raise UsageError("the model has no trainable parameters; attach a method first")
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps)
    total = total_steps
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total)

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant."""
    kwargs = {"use_reentrant": False}  # non-reentrant: works with a frozen base (no input grads needed)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
