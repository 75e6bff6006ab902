"""Both formats, one truth: PEFT's layout of an inducer adapter and inducer's own, and the checks.

A PEFT-layout inducer adapter is a folder with ``adapter_config.json`` (``peft_type`` ``"INDUCER"``)
and ``adapter_model.safetensors``; its tensors are named
``base_model.model.<parent>.peft_<slot>.inducer_modules.<tensor>`` where inducer's format (``docs/format.md``)
says ``<parent>.<slot>.<tensor>``. The tensors are the same; :func:`convert` rewrites one folder as
the other (``inducer.peft.convert(src, dst)``, either direction), and :func:`load_adapter` loads a
folder of either layout with inducer's checks.

The integrity rules of inducer's format hold for the PEFT layout too (:mod:`.checks`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import PeftInteropError
from ...io.adapter_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    _commit,
    method_configs,
    read_config,
    read_tensors,
    weights_path,
)
from ...io.adapter_format import load_adapter as load_inducer_adapter
from ...io.atomic import atomic_write
from .checks import PEFT_PREFIX, PEFT_WEIGHTS, check_peft_folder
from .config import InducerPeftConfig
from .layer import HOLDER_PREFIX, MODULES
from .registration import PEFT_TYPE

# The slots inducer's methods put modules in (inducer.core.naming): the component of a saved name that
# becomes PEFT's "peft_<slot>.inducer_modules".
SLOT = re.compile(r"inducer|prefix|prefix_encoder|adapter_attn|adapter_ffn|bitfit|lora(_\w+)?"
                  r"|kernel_mix(_\w+)?")
PEFT_SLOT = re.compile(rf"(^|\.){HOLDER_PREFIX}(\w+)\.{MODULES}(\.|$)")
__all__ = ["convert", "inducer_to_peft_name", "is_peft_layout", "load_adapter", "peft_to_inducer_name"]


def is_peft_layout(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a PEFT-layout inducer adapter (``peft_type`` ``"INDUCER"``)."""
    try:
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("peft_type") == PEFT_TYPE.value


def peft_to_inducer_name(key: str) -> str:
    """``base_model.model.h.0.attn.peft_inducer.inducer_modules.key_a`` -> ``h.0.attn.inducer.key_a``."""
    key = key.removeprefix(PEFT_PREFIX)
    match = PEFT_SLOT.search(key)
    if match is None:
        raise PeftInteropError(f"{key!r} is not an inducer tensor of a PEFT-layout adapter")
    return key[:match.start()] + match.group(1) + match.group(2) + match.group(3) + key[match.end():]


def inducer_to_peft_name(key: str) -> str:
    """Inverse of :func:`peft_to_inducer_name`: the first component that is a slot becomes
    ``peft_<slot>.inducer_modules``."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if SLOT.fullmatch(part):
            parts[i] = f"{HOLDER_PREFIX}{part}.{MODULES}"
            return PEFT_PREFIX + ".".join(parts)
    raise PeftInteropError(f"{key!r} lies in no inducer slot; it cannot be written in PEFT's layout")


TASK_TYPES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"),
              ("ForSequenceClassification", "SEQ_CLS"),
              ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForTokenClassification", "TOKEN_CLS"))


def convert(source: str | os.PathLike, target: str | os.PathLike, task_type: str | None = None) -> Path:
    """Rewrite the adapter in ``source`` in the other layout into ``target`` (PEFT -> inducer's format,
    inducer's format -> PEFT), after checking ``source`` fully. ``task_type``: PEFT's, for a PEFT
    target (default: from the base's class name, so ``AutoPeftModelForCausalLM`` finds the base class)."""
    source, target = Path(source), Path(target)
    if is_peft_layout(source):
        return _to_inducer(source, target)
    return _to_peft(source, target, task_type)


def _to_inducer(source: Path, target: Path) -> Path:
    from ...version import __version__

    check_peft_folder(source)
    config = InducerPeftConfig.from_json_file(str(source / CONFIG_FILE))
    config.pop("peft_version", None)
    peft_config = InducerPeftConfig(**{k: v for k, v in config.items() if k != "peft_type"})
    if peft_config.base_model_fingerprint is None:
        raise PeftInteropError(f"{source}: the adapter records no base model fingerprint")
    if peft_config.modules_to_save or peft_config.trainable_token_indices:
        raise PeftInteropError(f"{source}: modules_to_save / trainable tokens have no place in inducer's "
                               "format")
    tensors = {peft_to_inducer_name(k): v for k, v in load_file(str(source / PEFT_WEIGHTS)).items()}
    record = {"format": "inducer-adapter", "format_version": FORMAT_VERSION, "library_version": __version__,
              "methods": [c.to_dict() for c in peft_config.method_configs()], "train_head": False,
              "head_tensors": [], "base_tensors": [], "inference_tensors": [],
              "base_model": peft_config.base_model_fingerprint}
    for key in ("base_model_name_or_path", "revision"):
        if isinstance(config.get(key), str):
            record[key] = config[key]
    target.mkdir(parents=True, exist_ok=True)
    _commit(target, tensors, record)
    return target


def _to_peft(source: Path, target: Path, task_type: str | None) -> Path:
    config = read_config(source)
    tensors = read_tensors(weights_path(source), config, verify_checksum=True)
    if config.get("head_tensors") or config.get("base_tensors"):
        raise PeftInteropError(f"{source}: the adapter trains base tensors (a task head, BitFit); PEFT's "
                               "layout "
                               "keeps those as modules_to_save, which this conversion does not write")
    derived = set(config.get("inference_tensors") or [])
    architecture = config["base_model"].get("architecture") or ""
    if task_type is None:
        task_type = next((t for suffix, t in TASK_TYPES if architecture.endswith(suffix)), None)
    peft_config = InducerPeftConfig.from_methods(
        method_configs(config, source), task_type=task_type, base_model_name_or_path=config.get(
            "base_model_name_or_path"), revision=config.get("revision"))
    peft_config.base_model_fingerprint = config["base_model"]
    renamed = {inducer_to_peft_name(k): t.contiguous() for k, t in tensors.items() if k not in derived}
    target.mkdir(parents=True, exist_ok=True)
    atomic_write(target / PEFT_WEIGHTS, lambda tmp: save_file(renamed, tmp, metadata={"format": "pt"}))
    auto = None if task_type else {"base_model_class": architecture, "parent_library": "transformers"}
    peft_config.save_pretrained(str(target), auto_mapping_dict=auto)
    return target


def load_adapter(model: nn.Module, directory: str | os.PathLike, **kwargs) -> nn.Module:
    """``inducer.load_adapter`` for a folder of either layout (a PEFT-layout one is converted in a
    temporary folder first, with every check of both)."""
    if not is_peft_layout(directory):
        return load_inducer_adapter(model, directory, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        return load_inducer_adapter(model, _to_inducer(Path(directory), Path(tmp) / "adapter"), **kwargs)
