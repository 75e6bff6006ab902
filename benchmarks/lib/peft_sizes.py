"""The one rule that sizes PEFT's prefix-tuning like inducer's ``prefix`` preset (``cost.py`` and
``quality_nlu.py`` compare against it): the preset's length, spread over every layer when the
preset adapts only the top ones (PEFT puts prefixes on every layer), and the preset's
reparameterisation width (``prefix_projection`` when it has one).
"""

from __future__ import annotations


def peft_prefix_sizes(choice, n_layers: int) -> dict:
    """``PrefixTuningConfig`` keyword arguments for the ``prefix`` preset ``choice`` (a
    ``PresetChoice``) on a model of ``n_layers`` layers."""
    length = choice.sizes["length"]
    layers = choice.sizes.get("layers")
    if layers:  # the same count of prefix positions, over all layers
        length = max(1, round(length * len(layers) / n_layers))
    hidden = choice[0].reparam_hidden
    return {"num_virtual_tokens": length, "prefix_projection": hidden is not None,
            "encoder_hidden_size": hidden or 1}  # fmt: skip
