"""Prefix-tuning <-> PEFT ``PREFIX_TUNING`` (see :mod:`inducer.io.peft_interop` for the position shift).

PEFT stores the prefixes of a causal LM whose every self-attention module has them as one tensor
``prompt_embeddings`` of shape [l, L * 2 * H_kv * p], read by PEFT as [l, L, 2 (key, value), H_kv, p]
(layer-major; under grouped-query attention PEFT sets ``num_attention_heads`` = H_kv and
``token_dim`` = H_kv * p). Reparameterised prefixes are exported folded: PEFT loads flat ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.families import AttentionSite, find_attention_sites
from ...core.naming import DEFAULT_ADAPTER, slot_name
from ...errors import AdapterFormatError
from ..peft_conversion import PeftConversion, PeftInteropError, register_peft
from .method import CHILD_NAME, PrefixConfig
from .module import PrefixModule, key_value_heads


def causal_self_attention(model: nn.Module, what: str) -> list[AttentionSite]:
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


def to_peft(model: nn.Module, config: PrefixConfig,
            adapter: str = DEFAULT_ADAPTER) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT's ``PREFIX_TUNING`` adapter (config, ``prompt_embeddings``) of the prefixes that the
    adapter ``adapter`` gave a causal LM."""
    sites = causal_self_attention(model, "export_peft")
    modules = [getattr(site.module, slot_name(CHILD_NAME, adapter), None) for site in sites]
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


def from_peft(base: nn.Module, config: dict, tensors: dict[str, torch.Tensor]):
    """Flat self-attention prefixes for a PEFT ``PREFIX_TUNING`` adapter of a causal LM, and their loader."""
    task, submodules = config.get("task_type"), config.get("num_transformer_submodules", 1)
    if task != "CAUSAL_LM" or submodules != 1:
        raise PeftInteropError(f"import_peft: only causal-LM prefix adapters are supported (task_type "
                               f"{task!r}, num_transformer_submodules {submodules!r})")
    sites = causal_self_attention(base, "import_peft")
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
    stacked = embeddings.view(length, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)  # [L, 2, H, l, p]

    def load(model: nn.Module) -> None:
        with torch.no_grad():
            for site, (key, value) in zip(sites, stacked, strict=True):
                module = site.module.get_submodule(CHILD_NAME)
                module.key.copy_(key)
                module.value.copy_(value)

    return [PrefixConfig(length=length, reparam_hidden=None, attention="self")], load


PREFIX_CONVERSION = register_peft(PeftConversion(PrefixConfig.method, "PREFIX_TUNING", to_peft, from_peft))
