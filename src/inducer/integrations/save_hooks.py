"""``save_pretrained`` of an adapted model writes the inducer adapter, not the whole model.

``inducer.attach`` installs :func:`save_pretrained` on the model instance (the class's method is
untouched; ``detach`` removes it) through the extension point :mod:`inducer.runtime.listeners`, where the
package root registers :func:`install_save_hooks` / :func:`remove_save_hooks` (the core never imports
this module; throw-away twins adapted by ``attach_methods`` are not patched), so everything that
saves through ``model.save_pretrained`` —
transformers' ``Trainer.save_model`` and its checkpoints, TRL's trainers, user code — writes
``adapter_config.json`` + ``adapter-<hash>.safetensors`` (``docs/format.md``), with the base model's
name or path, as PEFT does. A full save of an adapted model would write ``inducer.*`` tensors that
``from_pretrained`` drops without an error (the adapter silently lost); that is what this prevents.
Reload with ``inducer.from_pretrained(folder)`` or ``inducer.load_adapter(base, folder)``.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from torch import nn

from ..errors import AdapterFormatError, UsageError
from ..io.adapter_format import (
    CONFIG_FILE,
    check_base,
    fingerprint,
    method_configs,
    read_config,
    read_tensors,
    save_adapter,
    weights_path,
)
from ..runtime.state import adapter_state, named_adapter

HOOK_MARK = "_inducer_save_pretrained"
__all__ = ["has_adapter", "install_save_hooks", "remove_save_hooks", "restore_adapter", "save_pretrained"]


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, state_dict: dict | None = None,
                    is_main_process: bool = True, push_to_hub: bool = False, **kwargs) -> Path | None:
    """Write the adapter of ``model`` (our format, adapter only) to ``save_directory``.

    Takes ``save_pretrained``'s arguments: ``state_dict`` (the full tensors, as ``Trainer`` passes
    them, e.g. gathered under FSDP), ``is_main_process`` (other ranks write nothing) and
    ``push_to_hub`` (then uploads the folder with ``inducer.push_to_hub``; ``repo_id`` defaults to the
    folder's name, as in transformers). Arguments about full-model files (``safe_serialization``,
    ``max_shard_size``) do not apply to an adapter and are ignored. On a model ``detach`` already
    restored, the class's own ``save_pretrained`` runs.
    """
    if adapter_state(model) is None:
        remove_save_hooks(model)
        return type(model).save_pretrained(model, save_directory, state_dict=state_dict,
                                           is_main_process=is_main_process, push_to_hub=push_to_hub, **kwargs)
    if not is_main_process:
        return None
    if state_dict is not None:
        # Trainer hands over the state dict of a model a wrapper may have renamed; only our tensors matter.
        params = dict(model.named_parameters())
        state_dict = {name: state_dict.get(name, params[name]) for name in params}
    folder = save_adapter(model, save_directory, state_dict=state_dict)
    if push_to_hub:
        from ..io.hub import push_to_hub as push

        push(model, kwargs.get("repo_id") or Path(save_directory).name, token=kwargs.get("token"),
             private=kwargs.get("private"), commit_message=kwargs.get("commit_message"))
    return folder


def install_save_hooks(model: nn.Module) -> None:
    """Make ``model.save_pretrained`` write the inducer adapter (run by ``inducer.attach``, as a
    :mod:`inducer.runtime.listeners` listener)."""
    if hasattr(type(model), "save_pretrained") and HOOK_MARK not in vars(model):
        model.save_pretrained = types.MethodType(save_pretrained, model)
        vars(model)[HOOK_MARK] = True


def remove_save_hooks(model: nn.Module) -> None:
    """Undo :func:`install_save_hooks` (run by ``inducer.detach``, as a listener)."""
    if vars(model).pop(HOOK_MARK, None):
        vars(model).pop("save_pretrained", None)


def has_adapter(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds an inducer adapter (a checkpoint written through these hooks)."""
    return (Path(directory) / CONFIG_FILE).is_file() and _is_inducer_config(Path(directory))


def _is_inducer_config(directory: Path) -> bool:
    try:
        read_config(directory)
    except AdapterFormatError:
        return False
    return True


def restore_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None) -> nn.Module:
    """Copy the adapter saved in ``directory`` into the adapter ``name`` of ``model`` (default: its
    only or active one), already attached with the same methods (resuming a run, loading the best
    checkpoint). Everything is checked first, as in ``load_adapter``; a mismatch raises
    :class:`~inducer.AdapterFormatError` and changes nothing."""
    directory = Path(directory)
    if adapter_state(model) is None:
        raise UsageError("restore_adapter: the model is not adapted; use inducer.load_adapter on a base")
    entry = named_adapter(model, name, "restore_adapter")
    config = read_config(directory)
    tensors = read_tensors(weights_path(directory), config, verify_checksum=True)
    check_base(config["base_model"], fingerprint(model), directory)
    saved = [m.to_dict() for m in method_configs(config, directory)]
    if saved != [c.to_dict() for c in entry.configs]:
        raise AdapterFormatError(f"{directory}: the checkpoint's methods {saved} differ from the model's "
                                 f"{[c.to_dict() for c in entry.configs]}; attach the same configs to resume")
    params = dict(model.named_parameters())
    # Model names -> names in the file (the adapter's slots are saved plain: inducer.core.naming).
    names = {n: entry.saved_name(n) for n in entry.parameter_names(model)}
    base = list(config.get("head_tensors") or []) + list(config.get("base_tensors") or [])
    names.update({n: n for n in base})
    wrong = [n for n, saved_as in names.items()
             if saved_as not in tensors or tensors[saved_as].shape != params[n].shape]
    if wrong:
        raise AdapterFormatError(f"{directory}: tensors {wrong[:3]} are missing or of another shape than "
                                 "the model's; the checkpoint is from another run")
    with torch.no_grad():
        for in_model, saved_as in names.items():
            params[in_model].copy_(tensors[saved_as].to(params[in_model].dtype))
    return model
