"""What the low-rank methods (LoRA, kernel-mix) share: the child's name and the hook adding its update."""

from __future__ import annotations

from ..families import LinearTarget
from .base import MethodHook


def child_name(base: str, target: LinearTarget) -> str:
    """``base`` (``lora``) for a whole layer, ``base_q`` (``lora_q``) for the query slice of a fused one."""
    whole = target.rows is None and target.start == 0 and target.stop == target.out_features
    return base if whole else f"{base}_{target.role or target.start}"


class AddLowRankUpdate(MethodHook):
    """Forward hook on a linear layer: adds a low-rank module's ``update(x)`` unless it is merged."""

    def __init__(self, update):
        self.update = update

    def __call__(self, _layer, inputs, output):
        if getattr(self.update, "merged", False):
            return output
        return output + self.update.update(inputs[0]).to(output.dtype)
