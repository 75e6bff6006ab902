"""attach / detach / count_parameters / save_adapter / load_adapter: the public model API."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import attention
from .families import find_attention_sites
from .methods import METHOD_CONFIGS, MethodConfig
from .methods.base import remove_method_hooks

FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
HEAD_CLASS_SUFFIXES = (
    "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
)


class AdapterFormatError(ValueError):
    """An adapter directory is missing, corrupted, from a newer format or for another base model."""


@dataclass
class _AttachState:
    configs: list
    train_head: bool
    added: list[str]  # qualified names of the modules attach created
    unfrozen: list[str]  # base parameters the methods train (BitFit's biases, full fine-tuning)
    head: list[str]  # base parameters made trainable as the task head
    requires_grad: dict[str, bool]
    implementations: dict


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of an adapted model.

    Attributes:
        trainable: parameters with ``requires_grad`` (the methods' budget + task head).
        added: parameters created by ``attach``.
        base: parameters of the base model, task head included.
        head: base parameters trained as the task head (counted separately from the budget).
        unfrozen: base parameters (outside the task head) that a method trains, e.g. BitFit's biases.
    """

    trainable: int
    added: int
    base: int
    head: int
    unfrozen: int = 0

    @property
    def budget(self) -> int:
        """The methods' trainable parameters, task head excluded: ``added + unfrozen``."""
        return self.added + self.unfrozen

    @property
    def added_percent(self) -> float:
        """``budget`` as a percentage of ``base`` (for pure-addition methods, ``added`` / ``base``)."""
        return 100.0 * self.budget / max(self.base, 1)

    def __str__(self) -> str:
        unfrozen = f" + unfrozen {self.unfrozen:,}" if self.unfrozen else ""
        return (f"trainable {self.trainable:,} | added {self.added:,}{unfrozen} ({self.added_percent:.3f}% "
                f"of base) | task head {self.head:,} | base {self.base:,}")


def _state(model: nn.Module) -> _AttachState | None:
    return getattr(model, "_inducer_state", None)


def _task_head_names(model: nn.Module) -> list[str]:
    """Base parameters outside the backbone of a classification-style model (a new task head)."""
    if not type(model).__name__.endswith(HEAD_CLASS_SUFFIXES):
        return []
    backbone = getattr(model, "base_model", model)
    if backbone is model:
        return []
    backbone_ids = {id(p) for p in backbone.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in backbone_ids]


def _as_list(configs) -> list[MethodConfig]:
    configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
    if not configs:
        raise ValueError("attach needs at least one method config, e.g. inducer.InducerConfig()")
    for config in configs:
        if not isinstance(config, MethodConfig) or METHOD_CONFIGS.get(config.method) is not type(config):
            known = ", ".join(c.__name__ for c in METHOD_CONFIGS.values())
            raise TypeError(f"attach: {type(config).__name__} is not a method config (known: {known})")
    return configs


def attach(model: nn.Module, configs, train_head: bool = True) -> nn.Module:
    """Adapt ``model`` in place with one method config or a list of them, and return it.

    Every base parameter is frozen; the methods' new parameters are trainable, and so is a task
    head that a classification-style model adds on top of its backbone (``train_head=False``
    freezes it). The model's attention implementation is switched to inducer's wrapper of it.
    If a method fails (bad config for this model, conflicting methods), the model is left as it was.
    """
    if _state(model) is not None:
        raise ValueError("attach: this model is already adapted; call inducer.detach(model) first")
    configs = _as_list(configs)
    sites = find_attention_sites(model)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    implementations = attention.set_implementation(model, attention.wrapped_name)
    state = _AttachState(configs, train_head, [], [], [], requires_grad, implementations)
    model._inducer_state = state
    existing = set(dict(model.named_modules()))
    try:
        for config in configs:
            applied = config.apply(model, sites)
            state.added += applied.modules
            state.unfrozen += [n for n in applied.unfrozen if n not in state.unfrozen]
    except BaseException:
        # Undo everything, including modules a method added before it failed (and so never
        # reported): every new top-most module goes.
        new = set(dict(model.named_modules())) - existing
        state.added = [n for n in new if n.rpartition(".")[0] not in new]
        detach(model)
        raise
    added_ids = {id(p) for name in state.added for p in model.get_submodule(name).parameters()}
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(id(p) in added_ids)
    # Modules a method adds at the model root (prefix-tuning's shared encoder) are outside the backbone
    # too, but they are the method's, not the task head's.
    head = [n for n in _task_head_names(model) if id(params[n]) not in added_ids] if train_head else []
    state.head = head
    state.unfrozen = [n for n in state.unfrozen if n not in head]
    for name in state.unfrozen + head:
        params[name].requires_grad_(True)
    return model


def _mergeable(model: nn.Module):
    """(layer, update module) pairs of every added module that can fold into its parent layer."""
    state = _state(model)
    if state is None:
        raise ValueError("this model was not adapted by inducer.attach")
    for name in state.added:
        module = model.get_submodule(name)
        if hasattr(module, "merge"):
            yield model.get_submodule(name.rpartition(".")[0]), module


def merge(model: nn.Module) -> nn.Module:
    """Fold mergeable updates (LoRA) into their layers' weights, for inference without overhead.

    Other methods stay active as they are. ``unmerge`` (or ``detach``) undoes it, up to rounding.
    """
    for layer, module in _mergeable(model):
        module.merge(layer)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: subtract the updates again (equal to the original weights up to rounding)."""
    for layer, module in _mergeable(model):
        module.unmerge(layer)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove everything ``attach`` added; the base model's state and outputs are as before.

    (After :func:`merge`, the weights are unmerged first, which restores them up to rounding.)
    """
    state = _state(model)
    if state is None:
        raise ValueError("detach: this model was not adapted by inducer.attach")
    unmerge(model)
    remove_method_hooks(model)
    for name in state.added:
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name), child)
    attention.restore_implementation(model, state.implementations)
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(name, p.requires_grad))
    del model._inducer_state
    return model


def _added_names(model: nn.Module, state: _AttachState) -> list[str]:
    prefixes = tuple(name + "." for name in state.added)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable, added, base, task-head and unfrozen parameters (tied weights once)."""
    state = _state(model)
    added_names = set(_added_names(model, state)) if state else set()
    head_names = set(state.head) if state else set()
    unfrozen_names = set(state.unfrozen) if state else set()
    trainable = added = base = head = unfrozen = 0
    for name, p in model.named_parameters():
        n = p.numel()
        trainable += n if p.requires_grad else 0
        if name in added_names:
            added += n
            continue
        base += n
        if p.requires_grad:
            head += n if name in head_names else 0
            unfrozen += n if name in unfrozen_names else 0
    return ParameterCount(trainable, added, base, head, unfrozen)


def fingerprint(model: nn.Module) -> dict:
    """Architecture and parameter shapes of the base model (ignoring anything attach added)."""
    state = _state(model)
    skip = set(_added_names(model, state)) if state else set()
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


def _atomic_write(path: Path, write) -> None:
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

    state = _state(model)
    if state is None:
        raise ValueError("save_adapter: this model was not adapted by inducer.attach")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    names = _added_names(model, state) + [n for n in state.unfrozen + state.head if params[n].requires_grad]
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
    if _state(model) is not None:
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
    expected = (set(_added_names(model, model._inducer_state)) | set(config.get("head_tensors", []))
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
