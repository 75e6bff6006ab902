"""The Hugging Face Hub: :func:`from_pretrained` (an adapter folder or hub id, base included),
:func:`push_to_hub` (the adapter and a generated model card) and :func:`model_card`.

Hub ids resolve through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE=1``, ``local_files_only``,
``token`` and ``revision`` all apply); a local folder is used as it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

from ..runtime.adapter import count_parameters
from ..runtime.state import adapter_state, named_adapter
from .adapter_format import (
    CONFIG_FILE,
    AdapterFormatError,
    base_model_source,
    load_adapter,
    read_config,
    save_adapter,
)

# What an adapter folder holds: the config, the weights of either format version, the model card.
ADAPTER_PATTERNS = [CONFIG_FILE, "adapter-*.safetensors", "adapter.safetensors", "README.md"]
__all__ = ["adapter_folder", "from_pretrained", "model_card", "push_to_hub"]


def adapter_folder(adapter: str | os.PathLike, revision: str | None = None, token: str | None = None,
                   cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """The local folder of ``adapter``: itself when it is a folder, else the hub repo's snapshot
    (downloaded, or read from the cache when offline)."""
    if Path(adapter).is_dir():
        return Path(adapter)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(adapter), revision=revision, token=token, cache_dir=cache_dir,
                                      local_files_only=local_files_only, allow_patterns=ADAPTER_PATTERNS))
    except HFValidationError as err:
        raise AdapterFormatError(f"{str(adapter)!r} is neither an adapter folder nor a hub id ({err})"
                                 ) from err
    except LocalEntryNotFoundError as err:
        raise AdapterFormatError(_not_found(str(adapter), local_files_only)) from err


def _not_found(adapter: str, local_files_only: bool) -> str:
    """Why ``adapter`` could not be had: downloading was off (and who turned it off), or it failed."""
    from huggingface_hub import constants

    if local_files_only or constants.HF_HUB_OFFLINE:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        return (f"adapter {adapter!r} is not a folder and not in the local hub cache, and downloading is off "
                f"({why}); download it once online, or give a local adapter folder")
    return (f"adapter {adapter!r} is not a folder, and downloading it from the hub failed (no connection to "
            "the hub, or no such repository) with nothing in the local hub cache; check the name and the "
            "network, or give a local adapter folder")


def _model_class(architecture: str | None):
    import transformers

    cls = getattr(transformers, architecture or "", None)
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise AdapterFormatError(f"the adapter's base architecture {architecture!r} is not a transformers "
                                 "class; load the base yourself and call inducer.load_adapter(base, folder)")
    return cls


def from_pretrained(adapter: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
                    revision: str | None = None, token: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    inference: bool = False, **from_pretrained_kwargs) -> nn.Module:
    """Load an adapter with its base model, as PEFT's ``AutoPeftModel*.from_pretrained`` does.

    ``adapter``: an adapter folder (``inducer.save_adapter``, ``model.save_pretrained`` of an adapted
    model, a ``Trainer`` checkpoint) or a hub id. The base is the one the adapter records
    (``base_model_name_or_path`` and ``revision`` in ``adapter_config.json``), or ``base_model``; it is
    built with the transformers class the adapter was trained on (``architecture``), by its
    ``from_pretrained`` with ``from_pretrained_kwargs`` (``dtype``, ``device_map``,
    ``quantization_config``...; ``token``, ``cache_dir`` and ``local_files_only`` apply to both).
    The base's fingerprint is then checked and the adapter loaded (``inference``: see
    :func:`~inducer.load_adapter`).
    """
    folder = adapter_folder(adapter, revision, token, cache_dir, local_files_only)
    config = read_config(folder)
    base = base_model or config.get("base_model_name_or_path")
    if not base:
        raise AdapterFormatError(f"{folder / CONFIG_FILE} records no base model (saved from a model built in "
                                 "code, or by an older inducer); pass base_model=<hub id or folder>")
    hub_kwargs = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if base_model is None and config.get("revision") and "revision" not in from_pretrained_kwargs:
        hub_kwargs["revision"] = config["revision"]  # the base commit the adapter was trained on
    cls = _model_class(config["base_model"].get("architecture"))
    model = cls.from_pretrained(str(base), **{k: v for k, v in hub_kwargs.items() if v is not None},
                               **from_pretrained_kwargs)
    return load_adapter(model.eval(), folder, inference=inference)


def model_card(model: nn.Module, metrics: dict | None = None, name: str | None = None) -> str:
    """A README.md for the adapter ``name`` of ``model`` (default: its only or active one): methods and
    sizes, base, parameter count and, when given, training metrics (e.g. ``trainer.evaluate()``'s)."""
    entry = named_adapter(model, name, "model_card")
    base = base_model_source(model).get("base_model_name_or_path")
    front = ["---", "library_name: inducer", *([f"base_model: {base}"] if base else []), "tags:", "- inducer",
             *[f"- {c.method}" for c in entry.configs], "---"]
    title = f"# {', '.join(c.method for c in entry.configs)} adapter for {base or type(model).__name__}"
    lines = [*front, "", title,
             "", f"An [inducer](https://pypi.org/project/inducer/) adapter of `{type(model).__name__}`"
             f"{f' (`{base}`)' if base else ''}.", "", "## Methods and sizes", ""]
    lines += [f"- `{json.dumps(c.to_dict(), sort_keys=True)}`" for c in entry.configs]
    # One adapter: the model's whole count (base parameters a user unfroze included), as before names.
    several = len(adapter_state(model).adapters) > 1
    lines += ["", "## Parameters", "", str(count_parameters(model, entry.name if several else None)), ""]
    if metrics:
        lines += ["## Training metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.6g} |" if isinstance(value, float) else f"| {name} | {value} |"
                  for name, value in metrics.items()]
        lines.append("")
    lines += ["## Use", "", "```python", "import inducer", "",
              'model = inducer.from_pretrained("<this repo id>")  # the base, checked, plus the adapter',
              "```", ""]
    return "\n".join(lines)


def push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, revision: str | None = None,
                metrics: dict | None = None, name: str | None = None) -> object:
    """Upload the adapter ``name`` of ``model`` (needed when it holds several) and a generated model
    card (:func:`model_card`) to the hub repo ``repo_id`` (created when missing) through
    ``huggingface_hub``; returns its commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp, name=name)
        (Path(tmp) / "README.md").write_text(model_card(model, metrics, name=name))
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload inducer adapter")
