"""Inducer-tuning inside PEFT's own API: ``get_peft_model``, ``PeftModel.from_pretrained``,
``AutoPeftModelForCausalLM``, TRL's ``peft_config=``, transformers' ``add_adapter`` / ``load_adapter``.

Importing this package (``import inducer.peft``) checks the installed PEFT version (one line if it
is not the tested one), makes ``"INDUCER"`` a ``PeftType`` and registers :class:`InducerPeftConfig`
with :class:`InducerTuner`. PEFT has no plugin discovery: import it before PEFT loads an inducer
adapter. See ``docs/peft.md``.
"""

from __future__ import annotations

from .versions import check_version

check_version("peft", "inducer.peft")

from .checks import check_peft_folder  # noqa: E402
from .config import InducerPeftConfig  # noqa: E402 (after the version guard, on purpose)
from .formats import convert, is_peft_layout, load_adapter  # noqa: E402
from .layer import InducerTunerLayer  # noqa: E402
from .registration import PEFT_TYPE, register  # noqa: E402
from .tuner import BASE, InducerTuner  # noqa: E402

register(InducerPeftConfig, InducerTuner)

__all__ = ["BASE", "PEFT_TYPE", "InducerPeftConfig", "InducerTuner", "InducerTunerLayer", "check_peft_folder",
           "convert", "is_peft_layout", "load_adapter"]
