"""How a method converts itself to and from Hugging Face PEFT's adapter format.

A method that PEFT can express registers a :class:`PeftConversion` (with :func:`register_peft`) in
its own file; :mod:`inducer.io.peft_interop` handles the files and dispatches through
:data:`BY_METHOD` (export, by inducer method tag) and :data:`BY_PEFT_TYPE` (import, by PEFT's
``peft_type``), naming no method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PeftInteropError  # noqa: F401 (defined in the error taxonomy, raised here)
from .base import MethodConfig

# fn(adapted model, its method config, the adapter's name) -> (PEFT adapter_config dict, tensors by PEFT
# name); the name says which of the model's modules are the adapter's (inducer.core.naming).
ToPeft = Callable[[nn.Module, MethodConfig, str], tuple[dict, dict[str, torch.Tensor]]]
# fn(base model, PEFT config dict, tensors) -> (configs to attach, fn(adapted model) loading the tensors)
FromPeft = Callable[[nn.Module, dict, dict[str, torch.Tensor]],
                    tuple[list[MethodConfig], Callable[[nn.Module], None]]]


@dataclass(frozen=True)
class PeftConversion:
    """One method's PEFT conversion: its inducer tag, PEFT's ``peft_type``, and both directions.

    ``from_peft`` checks the PEFT adapter against the base model and returns the configs to
    attach plus a loader that copies the tensors into the attached model; ``import_peft`` attaches,
    loads, and detaches again if the loader raises.
    """

    method: str
    peft_type: str
    to_peft: ToPeft
    from_peft: FromPeft


BY_METHOD: dict[str, PeftConversion] = {}
BY_PEFT_TYPE: dict[str, PeftConversion] = {}


def register_peft(conversion: PeftConversion) -> PeftConversion:
    """Make ``conversion`` known to ``export_peft`` (by method) and ``import_peft`` (by PEFT type)."""
    BY_METHOD[conversion.method] = conversion
    BY_PEFT_TYPE[conversion.peft_type] = conversion
    return conversion
