"""Parameter-free copies of models: structure and shapes without memory, for counting and checking."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the ``meta`` device.

    Same modules, names, shapes, dtypes, tied weights and config as ``model``, no data: attaching
    methods to it shows what they would create (names, shapes) at no memory cost, and nothing done
    to the twin reaches ``model``. Built by deep-copying with every tensor pre-mapped to its meta
    counterpart, so no weight is ever copied.
    """
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        meta = tensor.detach().to("meta")
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(model, memo)
