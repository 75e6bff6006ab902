"""The integrity rules of inducer's format, for PEFT-layout inducer adapters.

Checked before anything changes: :func:`check_peft_folder` (run by ``InducerPeftConfig.from_pretrained``
and so by ``PeftModel.from_pretrained`` / ``AutoPeftModel*``, and by ``inducer.peft.convert`` /
``load_adapter``): no pickle (a folder holding ``adapter_model.bin`` is refused; safetensors and JSON
only), the weights' SHA-256 recorded at save, floating-point finite tensors; then, at injection
(``InducerTuner``), the base model's fingerprint and every tensor's name and shape, found on a
parameter-free twin (:func:`expected_peft_tensors`, :func:`check_tensors`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ...core.meta import meta_twin
from ...errors import AdapterFormatError
from ...io.adapter_format import CONFIG_FILE, MAX_CONFIG_BYTES, read_tensors
from ...io.bounded_files import read_json
from ...runtime.adapter import attach_methods
from .layer import MODULES, relocate

PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLED = ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin")
PEFT_PREFIX = "base_model.model."
__all__ = ["PEFT_PREFIX", "PEFT_WEIGHTS", "PICKLED", "check_peft_folder", "check_tensors",
           "expected_peft_tensors"]


def check_peft_folder(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Validate a PEFT-layout inducer adapter folder without unpickling anything; return its tensors'
    shapes by name. :class:`~inducer.AdapterFormatError` naming the problem otherwise."""
    directory = Path(directory)
    pickled = [name for name in PICKLED if (directory / name).exists()]
    if pickled:
        raise AdapterFormatError(f"{directory / pickled[0]}: pickled weights are refused (loading them can "
                                 "run "
                                 "code); re-save the adapter with safetensors (save_pretrained's default)")
    config_path, weights = directory / CONFIG_FILE, directory / PEFT_WEIGHTS
    try:
        config = read_json(config_path, MAX_CONFIG_BYTES)
    except (OSError, ValueError) as err:
        raise AdapterFormatError(f"{config_path} cannot be read as JSON ({err})") from err
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{config_path} is not a JSON object; the adapter folder is not valid")
    # The same checks as inducer's own format: checksum, floating point, finite values.
    tensors = read_tensors(weights, config, verify_checksum=True, resave_hint=(
        "Re-save the adapter with save_pretrained after importing inducer.peft."))
    return {name: tuple(t.shape) for name, t in tensors.items()}


def _inducer_part(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The entries of inducer's modules (PEFT's modules_to_save copies are PEFT's to check), with
    PEFT's ``base_model.model.`` prefix removed (transformers' own saves leave it out)."""
    return {k.removeprefix(PEFT_PREFIX): v for k, v in shapes.items() if f".{MODULES}." in f".{k}"}


def expected_peft_tensors(model: nn.Module, config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the inducer tensors that ``config`` gives ``model`` in PEFT's file, found on a
    parameter-free twin (a hostile config costs no memory)."""
    check = "peft-check"
    twin = meta_twin(model)
    try:
        with torch.device("meta"):
            attach_methods(twin, config.method_configs(), train_head=False, name=check)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise AdapterFormatError(f"the adapter's methods do not fit this model ({err})") from err
    record = relocate(twin, check)
    params = dict(twin.named_parameters())
    return {name.replace(f"{MODULES}.{check}.", f"{MODULES}."): tuple(params[name].shape)
            for name in record.parameter_names(twin)}


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    """Refuse, naming a few, tensors that are missing, unexpected or of another shape."""
    found = _inducer_part(found)
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))[:3]
    unexpected = sorted(set(found) - set(expected))[:3]
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:3]
    raise AdapterFormatError(f"the adapter's tensors do not fit this model (missing {missing}, unexpected "
                             f"{unexpected}, other shapes {shapes})")
