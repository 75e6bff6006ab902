"""Exchange adapters with Hugging Face PEFT: :func:`export_peft` and :func:`import_peft`.

PEFT itself is not needed here: the directories are written and read directly, in PEFT's format
(``adapter_config.json`` + ``adapter_model.safetensors``). Both functions dispatch by method
(export: the inducer method tag; import: PEFT's ``peft_type``) through :data:`EXPORTERS` and
:data:`IMPORTERS`, so a further method (LoRA) is one exporter and one importer added there.

Supported: LoRA (``LORA``) on any model, and prefix-tuning (``PREFIX_TUNING`` without projection)
on causal LMs whose every
self-attention module has prefixes. PEFT stores them as one tensor ``prompt_embeddings`` of shape
[l, L * 2 * H_kv * p], read by PEFT as [l, L, 2 (key, value), H_kv, p] (layer-major; under
grouped-query attention PEFT sets ``num_attention_heads`` = H_kv and ``token_dim`` = H_kv * p).

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
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import adapter_state, attach, detach
from .adapter_format import AdapterFormatError, atomic_write
from .families import AttentionSite, find_attention_sites
from .methods.base import MethodConfig
from .methods.lora import LoRAConfig, LoRAModule
from .methods.prefix_tuning import PrefixConfig, PrefixModule, key_value_heads

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


class PeftInteropError(ValueError):
    """The adapter uses something PEFT cannot express, or the PEFT adapter does not fit the model."""


# method tag -> fn(model, config) -> (PEFT adapter_config dict, tensors)
EXPORTERS: dict[str, Callable[[nn.Module, MethodConfig], tuple[dict, dict[str, torch.Tensor]]]] = {}
# PEFT peft_type -> fn(base model, PEFT config dict, tensors) -> adapted model
IMPORTERS: dict[str, Callable[[nn.Module, dict, dict[str, torch.Tensor]], nn.Module]] = {}


def export_peft(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the adapter of ``model`` (adapted by ``inducer.attach``) as a PEFT adapter directory.

    ``peft.PeftModel.from_pretrained(base, directory)`` then loads it. Supported: LoRA on any
    model (a slice of a fused projection, such as GPT-2's query third of ``c_attn``, becomes a
    LoRA of the whole layer whose other rows are zero), and prefix-tuning on a causal LM with
    prefixes on every self-attention layer (flat, or reparameterised: the MLP is
    folded). What PEFT cannot express raises :class:`PeftInteropError` naming it: cross-attention
    prefixes, prefixes on only some layers, encoders, several methods in one adapter, a trained task
    head. Mind the position shift described in this module's docstring.
    """
    state = adapter_state(model)
    if state is None:
        raise ValueError("export_peft: this model was not adapted by inducer.attach")
    methods = [c.method for c in state.configs]
    if len(state.configs) != 1 or methods[0] not in EXPORTERS:
        raise PeftInteropError(
            f"export_peft: a PEFT adapter holds one method, of those inducer can export "
            f"({', '.join(sorted(EXPORTERS))}); this model has {methods}"
        )
    if state.unfrozen or any(p.requires_grad for n, p in model.named_parameters() if n in state.head):
        raise PeftInteropError("export_peft: trained base parameters (task head, unfrozen weights) are not "
                               "exported; attach with train_head=False or export without them")
    peft_config, tensors = EXPORTERS[methods[0]](model, state.configs[0])
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
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFormatError(f"{path} is not valid JSON ({err})") from err
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type not in IMPORTERS:
        raise PeftInteropError(f"import_peft: PEFT adapters of type {peft_type!r} are not supported "
                               f"(supported: {', '.join(sorted(IMPORTERS))})")
    weights = directory / PEFT_WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterFormatError(f"{weights} is missing (a PEFT adapter saved without safetensors? "
                                 "re-save it with save_pretrained(..., safe_serialization=True))")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise AdapterFormatError(f"{weights} cannot be read ({err})") from err
    if adapter_state(base) is not None:
        raise ValueError("import_peft: the model is already adapted; pass the plain base model")
    return IMPORTERS[peft_type](base, config, tensors)


# --- prefix-tuning --------------------------------------------------------------------------------


def _causal_self_attention(model: nn.Module, what: str) -> list[AttentionSite]:
    """The attention modules of a causal LM, in layer order; PEFT's prefix-tuning fits nothing else."""
    sites = find_attention_sites(model)
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    if encoder_decoder or any(site.is_cross for site in sites):
        raise PeftInteropError(f"{what}: inducer exchanges PEFT prefix-tuning for causal LMs only; this "
                               "model is an encoder-decoder (PEFT's prefixes reach neither its encoder nor "
                               "its cross-attention)")
    if not all(getattr(site.module, "is_causal", False) for site in sites):
        raise PeftInteropError(f"{what}: inducer exchanges PEFT prefix-tuning for causal LMs only; this "
                               "model's attention is not causal (an encoder)")
    layers = [getattr(site.module, "layer_idx", site.layer) for site in sites]
    if layers != list(range(len(sites))):
        raise PeftInteropError(f"{what}: expected one self-attention module per layer 0..{len(sites) - 1} "
                               f"in order, found layer indices {layers}")
    return sites


def _export_prefix(model: nn.Module, config: PrefixConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    sites = _causal_self_attention(model, "export_peft")
    modules = [getattr(site.module, "prefix", None) for site in sites]
    missing = [site.name for site, module in zip(sites, modules, strict=True)
               if not isinstance(module, PrefixModule)]
    if missing:
        raise PeftInteropError(f"export_peft: PEFT puts prefixes on every layer; these attention modules "
                               f"have none: {missing[:5]}")
    geometry = {(m.kv_heads, m.length, m.head_dim) for m in modules}
    if len(geometry) != 1:
        raise PeftInteropError(f"export_peft: PEFT needs one prefix shape for all layers, got {geometry}")
    kv_heads, length, head_dim = geometry.pop()
    with torch.no_grad():  # reparameterised prefixes are folded here: PEFT loads flat ones
        stacked = torch.stack([torch.stack(m.key_value()) for m in modules])  # [L, 2, H_kv, l, p]
    embeddings = stacked.permute(3, 0, 1, 2, 4).reshape(length, -1)  # [l, L * 2 * H_kv * p]
    token_dim = kv_heads * head_dim
    model_config = getattr(model, "config", None)
    peft_config = {
        "auto_mapping": None,
        "base_model_name_or_path": getattr(model_config, "_name_or_path", None) or None,
        "encoder_hidden_size": token_dim,
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": None,
        "num_attention_heads": kv_heads,
        "num_layers": len(modules),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": length,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": False,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": token_dim,
    }
    return peft_config, {"prompt_embeddings": embeddings}


def _import_prefix(base: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    task, submodules = config.get("task_type"), config.get("num_transformer_submodules", 1)
    if task != "CAUSAL_LM" or submodules != 1:
        raise PeftInteropError(f"import_peft: only causal-LM prefix adapters are supported (task_type "
                               f"{task!r}, num_transformer_submodules {submodules!r})")
    sites = _causal_self_attention(base, "import_peft")
    length, layers = config.get("num_virtual_tokens"), config.get("num_layers")
    heads, token_dim = config.get("num_attention_heads"), config.get("token_dim")
    embeddings = tensors.get("prompt_embeddings")
    if embeddings is None or set(tensors) != {"prompt_embeddings"}:
        raise AdapterFormatError(f"import_peft: expected one tensor 'prompt_embeddings', found "
                                 f"{sorted(tensors)}")
    if not all(isinstance(v, int) and v > 0 for v in (length, layers, heads, token_dim)) or token_dim % heads:
        raise AdapterFormatError(f"import_peft: invalid prefix geometry in the PEFT config "
                                 f"(num_virtual_tokens {length}, num_layers {layers}, num_attention_heads "
                                 f"{heads}, token_dim {token_dim})")
    head_dim = token_dim // heads
    if embeddings.shape != (length, layers * 2 * token_dim):
        raise AdapterFormatError(f"import_peft: prompt_embeddings has shape {tuple(embeddings.shape)}, the "
                                 f"config implies {(length, layers * 2 * token_dim)}")
    if layers != len(sites):
        raise PeftInteropError(f"import_peft: the adapter has {layers} layers, the model {len(sites)}")
    geometry = {(key_value_heads(site), site.head_dim) for site in sites}
    if geometry != {(heads, head_dim)}:
        raise PeftInteropError(f"import_peft: the adapter's prefixes have (key/value heads, head dim) "
                               f"{(heads, head_dim)}, the model's attention {sorted(geometry)}")
    attach(base, PrefixConfig(length=length, reparam_hidden=None, attention="self"))
    modules = [site.module.prefix for site in sites]
    stacked = embeddings.view(length, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)  # [L, 2, H, l, p]
    with torch.no_grad():
        for module, (key, value) in zip(modules, stacked, strict=True):
            module.key.copy_(key)
            module.value.copy_(value)
    return base


EXPORTERS[PrefixConfig.method] = _export_prefix
IMPORTERS["PREFIX_TUNING"] = _import_prefix


# --- LoRA -----------------------------------------------------------------------------------------

PEFT_PREFIX = "base_model.model."


def _export_lora(model: nn.Module, config: LoRAConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    # Gather each layer's LoRA modules (several when slices of a fused layer are adapted) and
    # stack them into one PEFT LoRA of rank sum(r): A = [a_1 .. a_k]^T, B = the b's placed in
    # their output rows. The scale alpha / r must survive PEFT's alpha / (k r): alpha becomes k alpha.
    per_layer: dict[str, list[LoRAModule]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRAModule):
            per_layer.setdefault(name.rpartition(".")[0], []).append(module)
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    conv1d = {m.is_conv1d for modules in per_layer.values() for m in modules}
    if len(conv1d) > 1:
        raise PeftInteropError("export_peft: PEFT's fan_in_fan_out is one flag per adapter; this LoRA "
                               "targets both GPT-2-style Conv1D and nn.Linear layers")
    for layer, modules in per_layer.items():
        a = torch.cat([m.a.detach().T for m in modules])  # [k r, in]
        b = torch.zeros(modules[0].out_features, a.shape[0], dtype=a.dtype)
        offset = 0
        for m in modules:
            b[m.start:m.stop, offset:offset + m.b.shape[0]] = m.b.detach().T
            offset += m.b.shape[0]
        tensors[f"{PEFT_PREFIX}{layer}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{layer}.lora_B.weight"] = b
        if len(modules) > 1:
            rank_pattern[layer] = a.shape[0]
            alpha_pattern[layer] = config.alpha * len(modules)
    model_config = getattr(model, "config", None)
    peft_config = {
        "peft_type": "LORA", "task_type": None, "r": config.r, "lora_alpha": config.alpha,
        "lora_dropout": config.dropout, "target_modules": sorted(per_layer),
        "fan_in_fan_out": conv1d.pop(),
        "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "modules_to_save": None,
        "inference_mode": True, "revision": None,
        "base_model_name_or_path": getattr(model_config, "_name_or_path", None) or None,
    }
    return peft_config, tensors


def _pattern_value(patterns: dict, name: str, default):
    # PEFT matches rank/alpha patterns against the end of a module's name.
    for pattern, value in patterns.items():
        if name == pattern or name.endswith(f".{pattern}"):
            return value
    return default


def _import_lora(base: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    for flag, bad in (("use_dora", True), ("use_rslora", True), ("lora_bias", True)):
        if config.get(flag) == bad:
            raise PeftInteropError(f"import_peft: PEFT LoRA with {flag}=true is not supported")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise PeftInteropError("import_peft: PEFT LoRA with trained biases or modules_to_save is not "
                               "supported")
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterFormatError(f"import_peft: unexpected tensor {key!r} in a PEFT LoRA adapter")
        layer, part = key[len(PEFT_PREFIX):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        weights.setdefault(layer, {})[part] = tensor
    modules = dict(base.named_modules())
    groups: dict[tuple[int, float], list[str]] = {}
    for layer, parts in weights.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise AdapterFormatError(f"import_peft: {layer} lacks lora_A or lora_B")
        if layer not in modules:
            raise PeftInteropError(f"import_peft: the adapter targets {layer!r}, which this model lacks "
                                   "(an adapter for another base model?)")
        r = _pattern_value(config.get("rank_pattern") or {}, layer, config.get("r"))
        alpha = _pattern_value(config.get("alpha_pattern") or {}, layer, config.get("lora_alpha"))
        if parts["lora_A"].shape[0] != r:
            raise AdapterFormatError(f"import_peft: {layer}.lora_A has rank {parts['lora_A'].shape[0]}, "
                                     f"the config says {r}")
        groups.setdefault((r, alpha), []).append(layer)
    dropout = config.get("lora_dropout", 0.0)
    attach(base, [LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=sorted(layers))
                  for (r, alpha), layers in groups.items()])
    for layer, parts in weights.items():
        module = modules[layer].lora
        if module.a.shape != parts["lora_A"].T.shape or module.b.shape != parts["lora_B"].T.shape:
            detach(base)
            raise AdapterFormatError(f"import_peft: {layer} LoRA shapes {tuple(parts['lora_A'].shape)}, "
                                     f"{tuple(parts['lora_B'].shape)} do not fit the layer")
        with torch.no_grad():
            module.a.copy_(parts["lora_A"].T)
            module.b.copy_(parts["lora_B"].T)
    return base


EXPORTERS[LoRAConfig.method] = _export_lora
IMPORTERS["LORA"] = _import_lora
