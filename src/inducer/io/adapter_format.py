"""save_adapter / load_adapter / fingerprint: the adapter folder format (``docs/format.md``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.meta import meta_twin
from ..core.naming import DEFAULT_ADAPTER, check_adapter_name
from ..errors import (
    AdapterFormatError,  # re-exported: public here since v1
    UsageError,
)
from ..methods import METHOD_CONFIGS, MethodConfig
from ..runtime.adapter import added_parameter_names, attach, attach_methods
from ..runtime.named_adapters import delete_adapter
from ..runtime.state import NamedAdapter, adapter_state
from .atomic import atomic_write, fsync_path, remove_stale_temporaries, sha256_file, write_temporary
from .base_identity import base_model_source, fingerprint  # re-exported: public here since v1
from .bounded_files import FileLimitError, read_json

# Version 2 names the weights file by its content (``adapter-<sha256[:16]>.safetensors``) so that
# replacing ``adapter_config.json`` is the one step that switches a folder from the old adapter to the
# new; version 1 (one fixed ``adapter.safetensors``) is still read.
FORMAT_VERSION = 2
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"  # format version 1's fixed name
WEIGHTS_PATTERN = re.compile(r"adapter-([0-9a-f]{16})\.safetensors")
__all__ = ["AdapterFormatError", "atomic_write", "base_model_source", "fingerprint", "load_adapter",
           "save_adapter", "weights_path"]


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    base_model: dict | None = None,
    name: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter-<hash>.safetensors`` (the trained tensors) to a folder.

    The format is documented in ``docs/format.md``. A save is one atomic step: the weights go to a
    new file named by their content, then the config that names them replaces the old config in one
    rename, then the superseded weights are removed. A crash or a full disk at any point leaves a
    folder that loads as the previous adapter or as the new one, never neither.

    ``state_dict``: the model's full tensors by name, to save instead of its own parameters, which
    under FSDP or DeepSpeed ZeRO-3 are shards (gather them with accelerate's
    ``accelerator.get_state_dict(model)``, called on every process). An empty tensor, what a
    sharded parameter looks like outside its gather, is refused rather than saved. ``base_model``:
    the base's :func:`fingerprint`, taken before a wrapper (FSDP) replaced its parameters by shards.
    ``name``: which of the model's adapters to save (needed when it holds several); the folder is
    the same as that adapter's alone on the base would give.
    """
    from ..version import __version__

    state = adapter_state(model)
    if state is None:
        raise UsageError("save_adapter: this model was not adapted by inducer.attach")
    # Saving is explicit: with several adapters, even one active, the caller names the one to save.
    entry = state.adapter(name, "save_adapter", pick_active=False)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    # Base tensors the adapter trains are saved while trainable; an inactive adapter's are frozen by
    # set_adapter, not by the user, so they are saved too.
    active = any(state.adapters[key] is entry for key in state.router.active)
    trained_base = [n for n in entry.unfrozen + entry.head if params[n].requires_grad or not active]
    prefixes = tuple(module + "." for module in entry.added)
    names = [n for n in params if n.startswith(prefixes)] + trained_base
    source = state_dict if state_dict is not None else params
    missing = [name for name in names if name not in source]
    if missing:
        raise UsageError(f"save_adapter: state_dict lacks {missing[:5]} (pass the model's full state dict)")
    tensors = {entry.saved_name(n): source[n].detach().cpu().contiguous() for n in names}
    empty = [n for n in names if source[n].numel() == 0 and params[n].numel() == 0]
    if empty:
        raise UsageError(
            f"save_adapter: {empty[:3]} are empty: the parameters are sharded (FSDP / DeepSpeed ZeRO-3). "
            "Gather them first: save_adapter(model, folder, state_dict=accelerator.get_state_dict(model))"
        )
    # An added module whose inference form differs from its training form (``inference_tensors()``:
    # prefix-tuning's reparameterisation MLP folded into flat prefixes) also stores the inference
    # form's tensors: the adapter then loads either way (load_adapter's ``inference``), no shape mismatch.
    derived = {}
    for module in entry.added:
        fold = getattr(model.get_submodule(module), "inference_tensors", None)
        if fold is not None:
            derived.update({f"{entry.saved_name(module)}.{key}": tensor for key, tensor in fold().items()})
    if set(derived) & set(tensors):
        raise RuntimeError(f"save_adapter: inference tensors {sorted(set(derived) & set(tensors))[:5]} "
                           "clash with trained tensors")
    tensors.update({name: t.detach().cpu().contiguous() for name, t in derived.items()})
    config = {
        "format": "inducer-adapter",
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "methods": [c.to_dict() for c in entry.configs],
        "train_head": entry.train_head,
        "head_tensors": [n for n in names if n in entry.head],
        "base_tensors": [n for n in names if n in entry.unfrozen],
        "inference_tensors": sorted(derived),
        "base_model": base_model or fingerprint(model),
        **base_model_source(model),
    }
    _commit(directory, tensors, config)
    return directory


# ---------------------------------------------------------------- loading: validate everything, then act

# Keys of adapter_config.json and the JSON types each may hold (format version 1).
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "library_version": (str,), "methods": (list,),
    "train_head": (bool,), "head_tensors": (list,), "base_tensors": (list,), "inference_tensors": (list,),
    "base_model": (dict,), "weights_sha256": (str,), "weights_file": (str,),
    # Optional: where the base model comes from, so an adapter folder alone can be loaded
    # (inducer.from_pretrained). Absent in adapters written before they existed.
    "base_model_name_or_path": (str,), "revision": (str,),
}
REQUIRED_KEYS = ("format", "format_version", "methods", "train_head", "base_model")
MAX_CONFIG_BYTES = 1 << 20  # an adapter config is a few kilobytes
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _commit(directory: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``tensors`` and ``config`` into ``directory`` so that a crash at any step leaves the old
    adapter or the new one (see :func:`save_adapter`)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, "adapter-weights"):
        remove_stale_temporaries(directory, name)  # left by an earlier save that crashed
    staged = write_temporary(directory / "adapter-weights",
                             lambda tmp: save_file(tensors, tmp, metadata={"format": "inducer"}))
    digest = sha256_file(staged)
    weights_file = f"adapter-{digest[:16]}.safetensors"
    try:
        committed = weights_path(directory).name
    except AdapterFormatError:
        committed = None  # no adapter here yet (or an unreadable one, which this save replaces)
    try:
        os.replace(staged, directory / weights_file)  # a new name: the old config's weights stay
        config = {**config, "weights_file": weights_file, "weights_sha256": digest}
        text = json.dumps(config, indent=2)
        atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        for leftover in (Path(staged), directory / weights_file):
            if leftover.name != committed and leftover.exists():
                leftover.unlink()
        raise
    # The commit point has passed: weights no config names any more are garbage.
    superseded = [directory / WEIGHTS_FILE, *directory.glob("adapter-*.safetensors")]
    for old in superseded:
        ours = old.name == WEIGHTS_FILE or WEIGHTS_PATTERN.fullmatch(old.name)
        if ours and old.name != weights_file and old.exists():
            old.unlink()
    fsync_path(directory)


def weights_path(directory: str | os.PathLike) -> Path:
    """The weights file of the adapter in ``directory``, as its config names it (format 1: the fixed
    ``adapter.safetensors``; format 2: ``adapter-<sha256[:16]>.safetensors``)."""
    directory = Path(directory)
    config = read_config(directory)
    if config["format_version"] == 1:
        return directory / WEIGHTS_FILE
    name = config.get("weights_file")
    match = WEIGHTS_PATTERN.fullmatch(name) if isinstance(name, str) else None
    recorded = config.get("weights_sha256")
    if match is None or (isinstance(recorded, str) and match.group(1) != recorded[:16]):
        raise AdapterFormatError(f"{directory / CONFIG_FILE}: 'weights_file' must be "
                                 "adapter-<first 16 hex digits of weights_sha256>.safetensors, got "
                                 f"{name!r}. Re-save the adapter.")
    return directory / name


def read_config(directory: Path) -> dict:
    """The adapter config, with every key checked for presence and JSON type."""
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise AdapterFormatError(f"adapter directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise AdapterFormatError(f"{path} is missing: is {str(directory)!r} an inducer adapter "
                                 "directory (written by inducer.save_adapter)?")
    try:
        config = read_json(path, MAX_CONFIG_BYTES)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFormatError(f"{path} is not valid JSON ({err}); the file is corrupted") from err
    except FileLimitError as err:
        raise AdapterFormatError(str(err)) from err
    if not isinstance(config, dict) or config.get("format") != "inducer-adapter":
        raise AdapterFormatError(f"{path} is not an inducer adapter config")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path} has format version {version!r}; this inducer reads 1 to {FORMAT_VERSION}. "
            "Upgrade inducer (pip install -U inducer) to load a newer one."
        )
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise AdapterFormatError(f"{path} has unknown keys {unknown}; it was not written by this format "
                                 f"version ({version}). Re-save the adapter with inducer.save_adapter.")
    for key in REQUIRED_KEYS:
        if config.get(key) is None:
            raise AdapterFormatError(f"{path} lacks {key!r}; the config is incomplete. Re-save the adapter.")
    for key, types in CONFIG_KEYS.items():
        value = config.get(key)
        if key in config and value is not None and not isinstance(value, types):
            raise AdapterFormatError(f"{path}: {key!r} must be a JSON {types[0].__name__}, "
                                     f"got {type(value).__name__}")
    for key in ("head_tensors", "base_tensors", "inference_tensors"):
        names = config.get(key) or []
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise AdapterFormatError(f"{path}: {key!r} must be a list of distinct tensor names")
    return config


def check_base(saved: dict, actual: dict, directory: Path) -> None:
    """Refuse, naming the differing fields, an adapter whose base fingerprint is not the model's."""
    if saved == actual:
        return
    differences = [f"{k}: adapter {saved.get(k)!r} vs model {actual.get(k)!r}"
                   for k in actual if saved.get(k) != actual.get(k)]
    raise AdapterFormatError(
        f"the adapter in {str(directory)!r} was trained on a different base model "
        f"({'; '.join(differences) or 'fingerprint fields differ'}). Load the base model it was trained on "
        "(same architecture, size and task head)."
    )


def method_configs(config: dict, directory: Path) -> list[MethodConfig]:
    """The adapter's method configs, each validated by its class (errors as AdapterFormatError)."""
    methods = []
    for entry in config["methods"]:
        if not isinstance(entry, dict):
            raise AdapterFormatError(f"{directory}: every entry of 'methods' must be a JSON object")
        cls = METHOD_CONFIGS.get(entry.get("method"))
        if cls is None:
            raise AdapterFormatError(f"{directory}: unknown method {entry.get('method')!r}; "
                                     "upgrade inducer to load it")
        try:
            methods.append(cls.from_dict(entry))
        except (TypeError, ValueError) as err:
            raise AdapterFormatError(f"{directory}: invalid {entry.get('method')} config: {err}") from err
    if not methods:
        raise AdapterFormatError(f"{directory}: the adapter config lists no methods")
    return methods


_RESAVE = ("Re-save the adapter with inducer.save_adapter, or, for an adapter you made by hand and trust, "
           "pass verify_checksum=False.")


def read_tensors(weights: Path, config: dict, verify_checksum: bool,
                 resave_hint: str = _RESAVE) -> dict[str, torch.Tensor]:
    """The weights file's tensors after the checksum (unless opted out), dtype and finiteness checks;
    ``resave_hint`` says how to fix a missing checksum (the PEFT layout has its own way)."""
    if not weights.is_file():
        raise AdapterFormatError(f"{weights} is missing; the adapter directory is incomplete")
    recorded = config.get("weights_sha256")
    if verify_checksum:
        if not isinstance(recorded, str) or len(recorded) != 64:
            raise AdapterFormatError(
                f"{weights.parent / CONFIG_FILE} has no weights_sha256, so the weights cannot be verified. "
                + resave_hint)
        if recorded != sha256_file(weights):
            raise AdapterFormatError(f"{weights} does not match the checksum in {CONFIG_FILE}: the file "
                                     "is truncated or altered. Re-save or re-download the adapter.")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFormatError(f"{weights} cannot be read ({err}); the file is corrupted") from err
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterFormatError(f"{weights}: {name} has dtype {tensor.dtype}; adapter tensors are "
                                     "floating point. The file is not a valid adapter.")
        if not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"{weights}: {name} holds NaN or infinite values; the adapter is "
                                     "broken (a diverged run?). Use an earlier checkpoint.")
    return tensors


def _expected_tensors(model: nn.Module, methods: list[MethodConfig], config: dict, inference: bool,
                      weights: Path, name: str = DEFAULT_ADAPTER) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the adapter must provide, found by attaching ``methods`` to a
    parameter-free twin of ``model`` (so a declared size of 10**9 costs nothing), and checked against
    what the config claims: a method writes only what it owns (its modules, the task head the model
    has, the base parameters it trains itself, such as BitFit's biases)."""
    twin = meta_twin(model)
    try:
        with torch.device("meta"):
            attach_methods(twin, methods, train_head=True, name=name)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise AdapterFormatError(
            f"{weights.parent}: the adapter's methods do not fit this model ({err})") from err
    entry = adapter_state(twin).adapters[name]
    parameters = adapter_parameters(twin, entry)
    shapes = {key: tuple(p.shape) for key, p in parameters.items()}
    owned = {entry.saved_name(n) for n in entry.parameter_names(twin)}
    head, base = config.get("head_tensors") or [], config.get("base_tensors") or []
    not_head = sorted(set(head) - set(entry.head))
    not_base = sorted(set(base) - set(entry.unfrozen))
    if not_head or not_base:
        raise AdapterFormatError(
            f"{weights.parent / CONFIG_FILE} claims base tensors its methods do not train (head_tensors "
            f"{not_head[:3]}, base_tensors {not_base[:3]}): refused, an adapter may only replace the task "
            "head and the parameters its own methods train.")
    expected = owned | set(head) | set(base)
    return {key: shapes[key] for key in sorted(expected)}


def adapter_parameters(model: nn.Module, entry: NamedAdapter) -> dict[str, nn.Parameter]:
    """The parameters one adapter sees, by their adapter-format names: its own and the base's
    (the model's other adapters left out)."""
    own = set(entry.parameter_names(model))
    others = owned_names(model) - own
    return {entry.saved_name(n): p for n, p in model.named_parameters() if n not in others}


def load_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    train_head: bool | None = None,
    inference: bool = False,
    verify_checksum: bool = True,
    name: str | None = None,
) -> nn.Module:
    """Attach the adapter saved in ``directory`` to an unadapted base ``model`` and load its tensors.

    ``name``: load it as that adapter, next to the ones the model holds (``inducer.adapters``);
    without it the model must be a plain base and the adapter is ``"default"``.

    ``inference=True`` attaches each method's inference form instead (``config.inference_config()``
    where a method has one: prefix-tuning's reparameterisation MLP folded into flat prefixes) and
    loads the tensors saved for it; tensors only training needs are left out. Outputs are the same.

    Everything is checked before the model is touched: the config's keys and types, the method
    configs, the weights' SHA-256 (``verify_checksum=False`` skips it, for hand-made adapters you
    trust), the base model's fingerprint, and every tensor's name, shape, dtype (floating point,
    the parameter's own) and values (finite). Declared sizes are checked on a parameter-free twin
    first, so a hostile config cannot make us allocate. A refused load raises
    :class:`AdapterFormatError` naming the problem and leaves ``model`` exactly as it was (its other
    adapters included). Files are never unpickled (safetensors and JSON only).
    """
    directory = Path(directory)
    config = read_config(directory)
    state = adapter_state(model)
    if state is not None and name is None:
        raise UsageError("load_adapter: the model is already adapted; pass the plain base model, or "
                         "name=... to load this adapter next to its adapters")
    if name is not None:
        check_adapter_name(name)
    if state is not None and name in state.adapters:
        raise UsageError(f"load_adapter: the model already has an adapter named {name!r}; pass another "
                         "name, or inducer.delete_adapter(model, name) first")
    name = DEFAULT_ADAPTER if name is None else name
    weights = weights_path(directory)
    tensors = read_tensors(weights, config, verify_checksum)
    check_base(config["base_model"], fingerprint(model), directory)
    methods = method_configs(config, directory)
    if inference:
        methods = [m.inference_config() for m in methods]
    expected = _expected_tensors(model, methods, config, inference, weights, name)
    derived = set(config.get("inference_tensors") or [])
    stray = sorted(derived - set(tensors))
    available = set(tensors) if inference else set(tensors) - derived
    # The inference form leaves training-only tensors (a folded MLP) unused; otherwise all must match.
    missing = set(expected) - available
    unexpected = set() if inference else available - set(expected)
    if missing or unexpected or stray:
        raise AdapterFormatError(f"{weights}: tensors do not match the adapter config (missing "
                                 f"{sorted(missing | set(stray))[:5]}, unexpected {sorted(unexpected)[:5]})")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterFormatError(f"{weights}: {key} has shape {tuple(tensors[key].shape)}, the "
                                     f"adapter's config implies {shape}")
    head_saved = config.get("train_head", True)
    attach(model, methods, train_head=head_saved if train_head is None else train_head, name=name)
    params = adapter_parameters(model, adapter_state(model).adapters[name])
    # Adapters saved from a half-precision base before inducer kept added tensors in float32 there
    # hold them in the base's half dtype: upcasting those to float32 is exact, so they still load.
    owned = owned_names(model)
    base_dtypes = {p.dtype for name, p in params.items() if name not in owned}
    wrong_dtype = [(n, tensors[n].dtype, params[n].dtype) for n in expected
                   if tensors[n].dtype != params[n].dtype
                   and not (params[n].dtype == torch.float32 and tensors[n].dtype in base_dtypes
                            and tensors[n].dtype in (torch.float16, torch.bfloat16))]
    if wrong_dtype:
        delete_adapter(model, name)
        tensor_name, saved, wanted = wrong_dtype[0]
        raise AdapterFormatError(f"{weights}: {tensor_name} is {saved}, the model's parameter is {wanted}; "
                                 f"load the base in the dtype the adapter was saved from ({saved}).")
    with torch.no_grad():
        for key in expected:
            params[key].copy_(tensors[key].to(params[key].dtype))
    return model


def owned_names(model: nn.Module) -> set[str]:
    """Names of the parameters ``attach`` added to ``model``."""
    state = adapter_state(model)
    return set(added_parameter_names(model, state)) if state else set()
