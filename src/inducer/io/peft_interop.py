"""Exchange adapters with Hugging Face PEFT: :func:`export_peft` and :func:`import_peft`.

PEFT itself is not needed here: the directories are written and read directly, in PEFT's format
(``adapter_config.json`` + ``adapter_model.safetensors``). Both functions dispatch by method
(export: the inducer method tag; import: PEFT's ``peft_type``) through the
:class:`~inducer.methods.peft_conversion.PeftConversion` each method registers in its own file.

Supported today: LoRA (``LORA``, :mod:`inducer.methods.lora`) on any model, and prefix-tuning
(``PREFIX_TUNING`` without projection, :mod:`inducer.methods.prefix_tuning.peft`) on causal LMs.

Positions differ between the two libraries. PEFT runs prefixes as a pre-filled KV cache, so real
tokens sit at positions l .. l+N-1 (PEFT even adds l to ``position_ids`` passed to it); inducer's
prefixes live inside attention and leave positions alone. With the same prefixes,
``peft_model(input_ids=ids)`` equals ``model(input_ids=ids, position_ids=arange(N) + l)``; called
without position ids the two differ by that shift (absolute position embeddings in GPT-2, rotary
phases between queries and prefix keys in Llama).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError
from ..methods.peft_conversion import BY_METHOD, BY_PEFT_TYPE, PeftInteropError
from ..runtime.adapter import adapter_state, attach, detach
from ..runtime.state import named_adapter
from .adapter_format import FLOAT_DTYPES, MAX_CONFIG_BYTES, AdapterFormatError, base_model_source
from .atomic import atomic_write
from .bounded_files import FileLimitError, read_json

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"

__all__ = ["PEFT_CONFIG_FILE", "PEFT_WEIGHTS_FILE", "PeftInteropError", "export_peft", "import_peft"]


def export_peft(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the adapter of ``model`` (adapted by ``inducer.attach``) as a PEFT adapter directory.

    ``peft.PeftModel.from_pretrained(base, directory)`` then loads it, and so does
    ``peft.AutoPeftModelForCausalLM.from_pretrained(directory)`` (the base's name or path, where
    transformers recorded it, is written as ``base_model_name_or_path``). Supported: LoRA on any
    model (a slice of a fused projection, such as GPT-2's query third of ``c_attn``, becomes a
    LoRA of the whole layer whose other rows are zero), and prefix-tuning on a causal LM with
    prefixes on every self-attention layer (flat, or reparameterised: the MLP is
    folded). What PEFT cannot express raises :class:`PeftInteropError` naming it: cross-attention
    prefixes, prefixes on only some layers, encoders, several methods in one adapter, a trained task
    head. Mind the position shift described in this module's docstring.
    """
    if adapter_state(model) is None:
        raise UsageError("export_peft: this model was not adapted by inducer.attach")
    entry = named_adapter(model, None, "export_peft")  # its only or active adapter
    methods = [c.method for c in entry.configs]
    if len(entry.configs) != 1 or methods[0] not in BY_METHOD:
        raise PeftInteropError(
            f"export_peft: a PEFT adapter holds one method, of those inducer can export "
            f"({', '.join(sorted(BY_METHOD))}); this model has {methods}"
        )
    if entry.unfrozen or any(p.requires_grad for n, p in model.named_parameters() if n in entry.head):
        raise PeftInteropError("export_peft: trained base parameters (task head, unfrozen weights) are not "
                               "exported; attach with train_head=False or export without them")
    peft_config, tensors = BY_METHOD[methods[0]].to_peft(model, entry.configs[0], entry.name)
    # PEFT's AutoPeftModel* builds the base from these (None: "Cannot infer the auto class").
    source = base_model_source(model)
    peft_config["base_model_name_or_path"] = source.get("base_model_name_or_path")
    peft_config["revision"] = source.get("revision")
    if not peft_config.get("task_type"):  # else AutoPeftModel* reads the base's class from here
        peft_config["auto_mapping"] = {"base_model_class": type(model).__name__,
                                       "parent_library": "transformers"}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write(directory / PEFT_WEIGHTS_FILE,
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(peft_config, indent=2, sort_keys=True)
    atomic_write(directory / PEFT_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def import_peft(base: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Attach the PEFT adapter saved in ``directory`` to the unadapted ``base`` model and load it.

    Supported: PEFT LoRA adapters (plain LoRA: not DoRA, rsLoRA or trained biases; one
    :class:`~inducer.LoRAConfig` per distinct rank and alpha), and PEFT prefix-tuning adapters of
    causal LMs (becoming a flat
    :class:`~inducer.PrefixConfig` with ``attention="self"``). Refuses other PEFT methods and
    adapters that do not fit the model with :class:`PeftInteropError`, and missing or unreadable
    files with :class:`~inducer.AdapterFormatError`. Mind the position shift described in this
    module's docstring.
    """
    directory = Path(directory)
    path = directory / PEFT_CONFIG_FILE
    if not path.is_file():
        raise AdapterFormatError(f"{path} is missing: is {str(directory)!r} a PEFT adapter directory?")
    try:
        config = read_json(path, MAX_CONFIG_BYTES)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFormatError(f"{path} is not valid JSON ({err})") from err
    except FileLimitError as err:
        raise AdapterFormatError(str(err)) from err
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type not in BY_PEFT_TYPE:
        raise PeftInteropError(f"import_peft: PEFT adapters of type {peft_type!r} are not supported "
                               f"(supported: {', '.join(sorted(BY_PEFT_TYPE))})")
    weights = directory / PEFT_WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterFormatError(f"{weights} is missing (a PEFT adapter saved without safetensors? "
                                 "re-save it with save_pretrained(..., safe_serialization=True))")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise AdapterFormatError(f"{weights} cannot be read ({err})") from err
    for name, tensor in tensors.items():  # as load_adapter checks its own files
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterFormatError(f"{weights}: {name} has dtype {tensor.dtype}; adapter tensors are "
                                     "floating point. The file is not a valid adapter.")  # fmt: skip
        if not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"{weights}: {name} holds NaN or infinite values; the adapter is "
                                     "broken (a diverged run?). Use an earlier checkpoint.")  # fmt: skip
    if adapter_state(base) is not None:
        raise UsageError("import_peft: the model is already adapted; pass the plain base model")
    configs, load = BY_PEFT_TYPE[peft_type].from_peft(base, config, tensors)
    attach(base, configs)
    try:
        load(base)
    except BaseException:
        detach(base)  # a tensor that does not fit: leave the base model as it was
        raise
    return base
