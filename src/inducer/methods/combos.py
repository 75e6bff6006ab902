"""Presets that combine methods: the paper's inducer-tuning recipes with LoRA and adapters.

They live here rather than in ``inducer_tuning.py`` so that no method module imports another
method's config just to declare a preset.
"""

from __future__ import annotations

from .adapters import AdapterConfig
from .base import PresetSpec, register_presets
from .inducer_tuning import InducerConfig
from .lora import lora_on_query

register_presets(
    PresetSpec(
        "inducer+lora", "inducer-tuning + LoRA on the query (the paper's NLU recipe)",
        lambda r_k, r_v, r, layers=None: [InducerConfig(r_k=r_k, r_v=r_v, layers=layers),
                                          lora_on_query(r, layers)],
        {"r_k": 2, "r_v": 4, "r": 4}, {"r_k": range(0, 33), "r_v": range(1, 65), "r": range(1, 65)},
        removed_at_zero=("r_k",)),
    PresetSpec(
        "inducer+mam", "inducer-tuning + LoRA-q + scaled parallel FFN adapter (the paper's 'inducer + MAM')",
        lambda r_k, r_v, r, bottleneck, layers=None: [
            InducerConfig(r_k=r_k, r_v=r_v, layers=layers), lora_on_query(r, layers),
            AdapterConfig(kind="parallel", bottleneck=bottleneck, scale=2.0, placement="ffn", layers=layers)],
        {"r_k": 2, "r_v": 4, "r": 4, "bottleneck": 16},
        {"r_k": range(0, 33), "r_v": range(1, 65), "r": range(1, 65), "bottleneck": range(1, 1025)},
        removed_at_zero=("r_k",)),
)
