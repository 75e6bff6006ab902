"""inducer: inducer-tuning (Chen et al., EMNLP 2022) for any transformers 5 model.

    import inducer
    model = inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=4))
    print(inducer.count_parameters(model))
    inducer.save_adapter(model, "out/")

Names are imported on first use (PEP 562), so ``import inducer`` (and the CLI's start) does not
import torch or transformers.
"""

from __future__ import annotations

import importlib

from . import listeners as _listeners

__version__ = "0.1.0"

# The composition root wires the built-in integration into attach's extension point (the core never
# imports an integration): every adapted model's save_pretrained then writes its adapter. The module is
# imported at the first attach, not here, so ``import inducer`` stays free of torch.
_listeners.register("inducer.integrations.save_hooks", "install_save_hooks", "remove_save_hooks")

# Public name -> the submodule defining it.
_EXPORTS: dict[str, str] = {
    "AdapterConfig": "methods.adapters",
    "AdapterFormatError": "adapter_format",
    "AttentionExtension": "methods.extension",
    "BitFitConfig": "methods.bitfit",
    "ConflictError": "methods.base",
    "FullFineTuneConfig": "methods.full",
    "InducerTrainer": "integrations.trainer",
    "InducerConfig": "methods.inducer_tuning",
    "KernelMixConfig": "methods.kernel_mix",
    "LoadedModel": "base_models",
    "LoRAConfig": "methods.lora",
    "MAMConfig": "methods.mam",
    "ParameterCount": "adapter",
    "PeftInteropError": "methods.peft_conversion",
    "PrefixConfig": "methods.prefix_tuning",
    "PresetChoice": "presets",
    "PresetSpec": "methods.base",
    "PRESETS": "presets",
    "UnsupportedModelError": "families",
    "active_adapters": "named_adapters",
    "adapters": "named_adapters",
    "attach": "adapter",
    "attention_path": "attention",
    "count_budget": "budget",
    "count_parameters": "adapter",
    "delete_adapter": "named_adapters",
    "detach": "adapter",
    "disable_adapter": "named_adapters",
    "export_peft": "peft_interop",
    "fingerprint": "adapter_format",
    "from_pretrained": "hub",
    "import_peft": "peft_interop",
    "inducer_trainer": "integrations.trainer",
    "load_adapter": "adapter_format",
    "load_model": "base_models",
    "load_tokenizer": "base_models",
    "merge": "adapter",
    "merge_and_unload": "merging",
    "preset": "presets",
    "push_to_hub": "hub",
    "route": "named_adapters",
    "save_adapter": "adapter_format",
    "set_adapter": "named_adapters",
    "set_attention_path": "attention",
    "unmerge": "adapter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inducer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
