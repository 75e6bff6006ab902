"""Both formats, one truth: PEFT's layout of an inducer adapter and inducer's own, and the checks.

A PEFT-layout inducer adapter is a folder with ``adapter_config.json`` (``peft_type`` ``"INDUCER"``)
and ``adapter_model.safetensors``; its tensors are named
``base_model.model.<parent>.peft_<slot>.inducer_modules.<tensor>`` where inducer's format (``docs/format.md``)
says ``<parent>.<slot>.<tensor>``. The tensors are the same; :func:`convert` rewrites one folder as
the other (``inducer.peft.convert(src, dst)``, either direction), and :func:`load_adapter` loads a
folder of either layout with inducer's checks.

The integrity rules of inducer's format hold for the PEFT layout too, checked before anything
changes (:func:`check_peft_folder`, run by ``InducerPeftConfig.from_pretrained`` and so by
``PeftModel.from_pretrained`` / ``AutoPeftModel*``): no pickle (a folder holding ``adapter_model.bin``
is refused; safetensors and JSON only), the weights' SHA-256 recorded at save, floating-point finite
tensors, and, at injection, the base model's fingerprint and every tensor's name and shape.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ...adapter_format import CONFIG_FILE, FORMAT_VERSION, _commit, read_config, read_tensors, weights_path
from ...adapter_format import load_adapter as load_inducer_adapter
from ...atomic import atomic_write, sha256_file
from ...errors import AdapterFormatError, PeftInteropError
from ...meta import meta_twin
from .layer import HOLDER_PREFIX, MODULES, relocate
from .registration import PEFT_TYPE

PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLED = ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin")
PEFT_PREFIX = "base_model.model."
# The slots inducer's methods put modules in (inducer.naming): the component of a saved name that
# becomes PEFT's "peft_<slot>.inducer_modules".
SLOT = re.compile(r"inducer|prefix|prefix_encoder|adapter_attn|adapter_ffn|bitfit|lora(_\w+)?|kernel_mix(_\w+)?")
PEFT_SLOT = re.compile(rf"(^|\.){HOLDER_PREFIX}(\w+)\.{MODULES}(\.|$)")
__all__ = ["check_peft_folder", "convert", "expected_peft_tensors", "is_peft_layout", "load_adapter",
           "peft_to_inducer_name", "inducer_to_peft_name"]


def is_peft_layout(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a PEFT-layout inducer adapter (``peft_type`` ``"INDUCER"``)."""
    try:
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("peft_type") == PEFT_TYPE.value


def check_peft_folder(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Validate a PEFT-layout inducer adapter folder without unpickling anything; return its tensors'
    shapes by name. :class:`~inducer.AdapterFormatError` naming the problem otherwise."""
    directory = Path(directory)
    pickled = [name for name in PICKLED if (directory / name).exists()]
    if pickled:
        raise AdapterFormatError(f"{directory / pickled[0]}: pickled weights are refused (loading them can run "
                                 "code); re-save the adapter with safetensors (save_pretrained's default)")
    config_path, weights = directory / CONFIG_FILE, directory / PEFT_WEIGHTS
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise AdapterFormatError(f"{config_path} cannot be read as JSON ({err})") from err
    if not weights.is_file():
        raise AdapterFormatError(f"{weights} is missing; the adapter folder is incomplete")
    recorded = config.get("weights_sha256") if isinstance(config, dict) else None
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise AdapterFormatError(f"{config_path} has no weights_sha256, so the weights cannot be verified; "
                                 "re-save the adapter with save_pretrained after importing inducer.peft")
    if recorded != sha256_file(weights):
        raise AdapterFormatError(f"{weights} does not match the checksum in {CONFIG_FILE}: the file is "
                                 "truncated or altered. Re-save or re-download the adapter.")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFormatError(f"{weights} cannot be read ({err}); the file is corrupted") from err
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"{weights}: {name} is not a finite floating-point tensor")
    return {name: tuple(t.shape) for name, t in tensors.items()}


def _inducer_part(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The entries of inducer's modules (PEFT's modules_to_save copies are PEFT's to check), with
    PEFT's ``base_model.model.`` prefix removed (transformers' own saves leave it out)."""
    return {k.removeprefix(PEFT_PREFIX): v for k, v in shapes.items() if f".{MODULES}." in f".{k}"}


def expected_peft_tensors(model: nn.Module, config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the inducer tensors that ``config`` gives ``model`` in PEFT's file, found on a
    parameter-free twin (a hostile config costs no memory)."""
    from ...adapter import attach_methods

    check = "peft-check"
    twin = meta_twin(model)
    try:
        with torch.device("meta"):
            attach_methods(twin, config.method_configs(), train_head=False, name=check)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise AdapterFormatError(f"the adapter's methods do not fit this model ({err})") from err
    record = relocate(twin, check)
    params = dict(twin.named_parameters())
    return {name.replace(f".{MODULES}.{check}.", f".{MODULES}.").replace(f"{MODULES}.{check}.", f"{MODULES}."):
            tuple(params[name].shape) for name in record.parameter_names(twin)}


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


TASK_TYPES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS"),
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
    from ... import __version__
    from .config import InducerPeftConfig

    check_peft_folder(source)
    config = InducerPeftConfig.from_json_file(str(source / CONFIG_FILE))
    config.pop("peft_version", None)
    peft_config = InducerPeftConfig(**{k: v for k, v in config.items() if k != "peft_type"})
    if peft_config.base_model_fingerprint is None:
        raise PeftInteropError(f"{source}: the adapter records no base model fingerprint")
    if peft_config.modules_to_save or peft_config.trainable_token_indices:
        raise PeftInteropError(f"{source}: modules_to_save / trainable tokens have no place in inducer's format")
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
    from .config import InducerPeftConfig

    config = read_config(source)
    tensors = read_tensors(weights_path(source), config, verify_checksum=True)
    if config.get("head_tensors") or config.get("base_tensors"):
        raise PeftInteropError(f"{source}: the adapter trains base tensors (a task head, BitFit); PEFT's layout "
                               "keeps those as modules_to_save, which this conversion does not write")
    derived = set(config.get("inference_tensors") or [])
    from ...adapter_format import method_configs

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
