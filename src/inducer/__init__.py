"""inducer: inducer-tuning (Chen et al., EMNLP 2022) for any transformers 5 model.

    import inducer
    model = inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=4))
    print(inducer.count_parameters(model))
    inducer.save_adapter(model, "out/")
"""

from .attention import attention_path, set_attention_path
from .families import UnsupportedModelError
from .methods import ConflictError
from .methods.inducer_tuning import InducerConfig
from .model import (
    AdapterFormatError,
    ParameterCount,
    attach,
    count_parameters,
    detach,
    fingerprint,
    load_adapter,
    save_adapter,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterFormatError",
    "ConflictError",
    "InducerConfig",
    "ParameterCount",
    "UnsupportedModelError",
    "attach",
    "attention_path",
    "count_parameters",
    "detach",
    "fingerprint",
    "load_adapter",
    "save_adapter",
    "set_attention_path",
]
