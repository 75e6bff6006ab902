"""save_adapter / load_adapter / fingerprint: the adapter folder format (``docs/format.md``)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import adapter_state, added_parameter_names, attach, detach
from .methods import METHOD_CONFIGS

FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"


class AdapterFormatError(ValueError):
    """An adapter directory is missing, corrupted, from a newer format or for another base model."""


def fingerprint(model: nn.Module) -> dict:
    """Architecture and parameter shapes of the base model (ignoring anything attach added)."""
    state = adapter_state(model)
    skip = set(added_parameter_names(model, state)) if state else set()
    lines = [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters() if name not in skip]
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(p.numel() for name, p in model.named_parameters() if name not in skip),
        "shapes_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_temporary(path: Path, write) -> str:
    """Write a file through ``write(tmp_path)`` to a temporary name beside ``path``; return it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared adapters unreadable
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def atomic_write(path: Path, write) -> None:
    """Write ``path`` atomically: a temporary file, then a rename."""
    os.replace(_write_temporary(path, write), path)


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    base_model: dict | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter.safetensors`` (the trained tensors) to a folder.

    The format is documented in ``docs/format.md``. Both files are written to temporary names
    first, then renamed into place: a failed save (a full disk) leaves the previous adapter as it
    was, and a torn one is refused on load by the checksum.

    ``state_dict``: the model's full tensors by name, to save instead of its own parameters, which
    under FSDP or DeepSpeed ZeRO-3 are shards (gather them with accelerate's
    ``accelerator.get_state_dict(model)``, called on every process). An empty tensor, what a
    sharded parameter looks like outside its gather, is refused rather than saved. ``base_model``:
    the base's :func:`fingerprint`, taken before a wrapper (FSDP) replaced its parameters by shards.
    """
    from . import __version__

    state = adapter_state(model)
    if state is None:
        raise ValueError("save_adapter: this model was not adapted by inducer.attach")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    trained_base = [n for n in state.unfrozen + state.head if params[n].requires_grad]
    names = added_parameter_names(model, state) + trained_base
    source = state_dict if state_dict is not None else params
    missing = [name for name in names if name not in source]
    if missing:
        raise ValueError(f"save_adapter: state_dict lacks {missing[:5]} (pass the model's full state dict)")
    tensors = {name: source[name].detach().cpu().contiguous() for name in names}
    empty = [name for name, tensor in tensors.items() if tensor.numel() == 0 and params[name].numel() == 0]
    if empty:
        raise ValueError(
            f"save_adapter: {empty[:3]} are empty: the parameters are sharded (FSDP / DeepSpeed ZeRO-3). "
            "Gather them first: save_adapter(model, folder, state_dict=accelerator.get_state_dict(model))"
        )
    # An added module whose inference form differs from its training form (``inference_tensors()``:
    # prefix-tuning's reparameterisation MLP folded into flat prefixes) also stores the inference
    # form's tensors: the adapter then loads either way (load_adapter's ``inference``), no shape mismatch.
    derived = {}
    for name in state.added:
        fold = getattr(model.get_submodule(name), "inference_tensors", None)
        if fold is not None:
            derived.update({f"{name}.{key}": tensor for key, tensor in fold().items()})
    if set(derived) & set(tensors):
        raise RuntimeError(f"save_adapter: inference tensors {sorted(set(derived) & set(tensors))[:5]} "
                           "clash with trained tensors")
    tensors.update({name: t.detach().cpu().contiguous() for name, t in derived.items()})
    weights = directory / WEIGHTS_FILE
    # Both files are written under temporary names before either replaces its predecessor, so a
    # failure while writing (a full disk) leaves the previous adapter whole.
    weights_tmp = _write_temporary(
        weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "inducer"})
    )
    config = {
        "format": "inducer-adapter",
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "methods": [c.to_dict() for c in state.configs],
        "train_head": state.train_head,
        "head_tensors": [n for n in names if n in state.head],
        "base_tensors": [n for n in names if n in state.unfrozen],
        "inference_tensors": sorted(derived),
        "base_model": base_model or fingerprint(model),
        "weights_sha256": _sha256(Path(weights_tmp)),
    }
    text = json.dumps(config, indent=2)
    try:
        config_tmp = _write_temporary(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        os.remove(weights_tmp)
        raise
    os.replace(weights_tmp, weights)
    os.replace(config_tmp, directory / CONFIG_FILE)
    return directory


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise AdapterFormatError(f"adapter directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise AdapterFormatError(f"{path} is missing: is {str(directory)!r} an inducer adapter "
                                 "directory (written by inducer.save_adapter)?")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFormatError(f"{path} is not valid JSON ({err}); the file is corrupted") from err
    if not isinstance(config, dict) or config.get("format") != "inducer-adapter":
        raise AdapterFormatError(f"{path} is not an inducer adapter config")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path} has format version {version}; this inducer reads up to {FORMAT_VERSION}. "
            "Upgrade inducer (pip install -U inducer) to load it."
        )
    return config


def _check_base(saved: dict, actual: dict, directory: Path) -> None:
    if saved == actual:
        return
    differences = [f"{k}: adapter {saved.get(k)!r} vs model {actual.get(k)!r}"
                   for k in actual if saved.get(k) != actual.get(k)]
    raise AdapterFormatError(
        f"the adapter in {str(directory)!r} was trained on a different base model "
        f"({'; '.join(differences)}). Load the base model it was trained on "
        "(same architecture, size and task head)."
    )


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, train_head: bool | None = None, inference: bool = False
) -> nn.Module:
    """Attach the adapter saved in ``directory`` to an unadapted base ``model`` and load its tensors.

    ``inference=True`` attaches each method's inference form instead (``config.inference_config()``
    where a method has one: prefix-tuning's reparameterisation MLP folded into flat prefixes) and
    loads the tensors saved for it; tensors only training needs are left out. Outputs are the same.

    Refuses, with an :class:`AdapterFormatError` naming the problem, a missing or corrupted file,
    a newer format version, or a base model other than the one the adapter was trained on.
    """
    directory = Path(directory)
    config = _read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterFormatError(f"{weights} is missing; the adapter directory is incomplete")
    if config.get("weights_sha256") not in (None, _sha256(weights)):
        raise AdapterFormatError(f"{weights} does not match the checksum in {CONFIG_FILE}: the file "
                                 "is truncated or altered. Re-save or re-download the adapter.")
    if adapter_state(model) is not None:
        raise ValueError("load_adapter: the model is already adapted; pass the plain base model")
    _check_base(config.get("base_model", {}), fingerprint(model), directory)
    methods = []
    for entry in config.get("methods", []):
        cls = METHOD_CONFIGS.get(entry.get("method"))
        if cls is None:
            raise AdapterFormatError(f"{directory}: unknown method {entry.get('method')!r}; "
                                     "upgrade inducer to load it")
        methods.append(cls.from_dict(entry))
    if inference:
        methods = [m.inference_config() for m in methods]
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise AdapterFormatError(f"{weights} cannot be read ({err}); the file is corrupted") from err
    attach(model, methods, train_head=config.get("train_head", True) if train_head is None else train_head)
    params = dict(model.named_parameters())
    expected = (set(added_parameter_names(model, adapter_state(model))) | set(config.get("head_tensors", []))
                | set(config.get("base_tensors", [])))
    derived = set(config.get("inference_tensors", []))
    available = set(tensors) if inference else set(tensors) - derived
    # The inference form leaves training-only tensors (a folded MLP) unused; otherwise all must match.
    missing, unexpected = expected - available, set() if inference else available - expected
    if missing or unexpected:
        detach(model)
        raise AdapterFormatError(f"{weights}: tensors do not match the adapter config (missing "
                                 f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    with torch.no_grad():
        for name in sorted(expected):
            tensor = tensors[name]
            if params[name].shape != tensor.shape:
                detach(model)
                raise AdapterFormatError(f"{weights}: {name} has shape {tuple(tensor.shape)}, the "
                                         f"model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model
