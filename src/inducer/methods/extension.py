"""The interface between inducer's attention function and the methods that act inside attention.

A method that changes attention itself (prefix-tuning extends the keys, inducer-tuning composes the
output) adds to each adapted attention module a child that is an :class:`AttentionExtension`.
That is its registration: the attention function (:mod:`inducer.runtime.attention`) finds the module's
extensions among its direct children, so ``copy.deepcopy`` keeps them and ``detach``, which deletes
the child, removes them, and the child's name (``prefix``, ``inducer``) stays the saved tensor
prefix.

How several extensions of one module combine (registration order = the order ``attach`` applied
the methods):

1. every extension's :meth:`~AttentionExtension.extend` runs, in registration order, each on the
   keys, values and mask the previous one returned (prefixes are prepended, so the last one
   registered ends up first);
2. attention runs once over the extended keys, yielding each query's log-sum-exp when any
   extension :attr:`~AttentionExtension.needs_lse` (the LSE then covers the added keys too);
3. every extension's :meth:`~AttentionExtension.compose` runs, in registration order, each on the
   output the previous one returned.

So all keys are extended before any output is composed, whatever order the methods come in.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class AttentionExtension(nn.Module):
    """Base class of the per-attention-module children the attention function calls.

    Attributes:
        extends_keys: True when :meth:`extend` adds keys (the fused kernel's own causal pattern,
            top-left aligned, is then wrong and the mask carries the causal part instead).
        needs_lse: True when :meth:`compose` needs each query's log-sum-exp over the keys.
    """

    extends_keys: ClassVar[bool] = False
    needs_lse: ClassVar[bool] = False

    def check_query(self, query: torch.Tensor) -> None:
        """Raise ``RuntimeError`` when ``query`` (B, H, N, p) does not fit what this was built for."""

    def extend(
        self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values (B, H_kv, M, p) and additive mask (..., N, M) to attend over; unchanged here."""
        return key, value, mask

    def compose(
        self,
        query: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor | None,
        scaling: float,
        dropout: float,
        training: bool,
    ) -> torch.Tensor:
        """The attention output (B, H, N, p) after this extension; unchanged here.

        ``lse`` is the (B, H, N) log-sum-exp of the scores when some extension of the module
        :attr:`needs_lse`, else None.
        """
        return out


def routed_row_index(items: list, batch: int, device: torch.device) -> torch.Tensor:
    """(batch,) position in ``items`` (``(thing, rows)`` pairs, rows a (batch,) bool mask or True)
    of the item serving each row, -1 for rows none serves: how a routed batch gathers each row's
    adapter tensors (``compose_routed``, ``routed`` hooks)."""
    if any(rows is True for _, rows in items):
        index = torch.full((batch,), -1, dtype=torch.long, device=device)
        for position, (_, rows) in enumerate(items):
            index = index.fill_(position) if rows is True else index.masked_fill(rows, position)
        return index
    masks = torch.stack([rows for _, rows in items])  # (items, batch); routed rows are disjoint
    return masks.to(torch.uint8).argmax(0).masked_fill(~masks.any(0), -1)


class ExtensionHolder(nn.Module):
    """A child of an attention module that holds extensions one level down instead of being one:
    PEFT's layout keeps each adapter's module under ``<slot>.<dict>.<adapter name>``
    (:mod:`inducer.integrations.peft_native`), so the extensions cannot be direct children there."""

    def held_extensions(self) -> list[AttentionExtension]:
        """The extensions held, in the order they were added."""
        return []


def attention_extensions(module: nn.Module) -> list[AttentionExtension]:
    """The extensions registered on an attention module, in registration order (those of an
    :class:`ExtensionHolder` child at its place)."""
    found = []
    for child in module.children():
        if isinstance(child, AttentionExtension):
            found.append(child)
        elif isinstance(child, ExtensionHolder):
            found.extend(child.held_extensions())
    return found
