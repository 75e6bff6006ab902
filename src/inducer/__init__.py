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

from .runtime import listeners as _listeners
from .version import __version__  # noqa: F401 (public: inducer.__version__)

# The composition root wires the built-in integration into attach's extension point (the core never
# imports an integration): every adapted model's save_pretrained then writes its adapter. The module is
# imported at the first attach, not here, so ``import inducer`` stays free of torch.
_listeners.register("inducer.integrations.save_hooks", "install_save_hooks", "remove_save_hooks")

# Public name -> the submodule defining it.
_EXPORTS: dict[str, str] = {
    "AdapterConfig": "methods.adapters",
    "AdapterFormatError": "io.adapter_format",
    "AttentionExtension": "methods.extension",
    "BitFitConfig": "methods.bitfit",
    "ConflictError": "methods.base",
    "FullFineTuneConfig": "methods.full",
    "InducerTrainer": "integrations.trainer",
    "InducerConfig": "methods.inducer_tuning",
    "KernelMixConfig": "methods.kernel_mix",
    "LoadedModel": "data.base_models",
    "LoRAConfig": "methods.lora",
    "MAMConfig": "methods.mam",
    "ParameterCount": "runtime.adapter",
    "PeftInteropError": "methods.peft_conversion",
    "PrefixConfig": "methods.prefix_tuning",
    "PresetChoice": "sizing.presets",
    "PresetSpec": "methods.base",
    "PRESETS": "sizing.presets",
    "UnsupportedModelError": "core.families",
    "active_adapters": "runtime.named_adapters",
    "adapters": "runtime.named_adapters",
    "attach": "runtime.adapter",
    "attention_path": "runtime.attention",
    "count_budget": "sizing.budget",
    "count_parameters": "runtime.adapter",
    "delete_adapter": "runtime.named_adapters",
    "detach": "runtime.adapter",
    "disable_adapter": "runtime.named_adapters",
    "export_peft": "io.peft_interop",
    "fingerprint": "io.adapter_format",
    "from_pretrained": "io.hub",
    "import_peft": "io.peft_interop",
    "inducer_trainer": "integrations.trainer",
    "load_adapter": "io.adapter_format",
    "load_model": "data.base_models",
    "load_tokenizer": "data.base_models",
    "merge": "runtime.adapter",
    "merge_and_unload": "runtime.merging",
    "preset": "sizing.presets",
    "push_to_hub": "io.hub",
    "route": "runtime.named_adapters",
    "save_adapter": "io.adapter_format",
    "set_adapter": "runtime.named_adapters",
    "set_attention_path": "runtime.attention",
    "unmerge": "runtime.adapter",
}

__all__ = sorted(_EXPORTS)

# Documented entry points below the public API, by module: for code that builds on inducer's parts
# (the benchmarks, a new method, research on the kernels). Stable like ``__all__`` (a change is a
# CHANGELOG entry) and listed in docs/api.md; everything else in a submodule may move.
SUBMODULE_API: dict[str, tuple[str, ...]] = {
    "inducer.app.compare": ("next_lr",),
    "inducer.app.demo": ("demo_spec",),
    "inducer.app.experiment": ("build", "run_one", "train_run", "predict", "evaluate_adapter"),
    "inducer.app.runspec": ("RunSpec", "resolve"),
    "inducer.core.kernels": ("additive_mask", "as_dtype", "fused_attention", "reference_attention"),
    "inducer.data.base_models": ("load_model", "load_tokenizer", "resolve_model_path"),
    "inducer.data.encoding": ("encode_options", "encode_split"),
    "inducer.data.metrics": ("generation_metrics",),
    "inducer.data.task_source": ("TaskSource",),
    "inducer.data.tasks": ("TaskSpec", "group_references", "load_task", "register_task", "vader"),
    "inducer.io.adapter_format": ("owned_names", "weights_path"),
    "inducer.io.cache": ("cache_root",),
    "inducer.methods.inducer_tuning": ("InducerModule",),
    "inducer.runtime.adapter": ("count_parameters",),
    "inducer.runtime.attention": ("set_implementation",),
    "inducer.sizing.budget": ("percent_of_base",),
    "inducer.sizing.presets": ("parse_budget", "preset"),
    "inducer.training.callbacks": ("TrainerCallback",),
    "inducer.training.config": ("TrainConfig",),
    "inducer.training.evaluation": ("evaluation_loss", "generate_texts"),
    "inducer.training.trainer": ("Trainer", "set_seed"),
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inducer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
