"""What the low-rank methods (LoRA, kernel-mix) share: the child's name and the hook adding its update."""

from __future__ import annotations

from ..core.linear_targets import LinearTarget
from .base import MethodHook
from .extension import routed_row_index


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

    @classmethod
    def routed(cls, items: list, _layer, inputs, output):
        """Several routed adapters' updates of one layer at once, where the update's class can
        (``routed_update``, LoRA); None otherwise (the caller then runs them one by one)."""
        updates = [hook.update for hook, _ in items]
        batched = getattr(type(updates[0]), "routed_update", None)
        if batched is None or any(type(update) is not type(updates[0]) for update in updates):
            return None
        delta = batched(updates, routed_row_index(items, output.shape[0], output.device), inputs[0])
        return None if delta is None else output + delta.to(output.dtype)
