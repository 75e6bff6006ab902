"""inducer: inducer-tuning (Chen et al., EMNLP 2022) for any transformers 5 model.

    import inducer
    model = inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=4))
    print(inducer.count_parameters(model))
    inducer.save_adapter(model, "out/")
"""

from .adapter import ParameterCount, attach, count_parameters, detach, merge, unmerge
from .adapter_format import AdapterFormatError, fingerprint, load_adapter, save_adapter
from .attention import attention_path, set_attention_path
from .families import UnsupportedModelError
from .methods import ConflictError
from .methods.adapters import AdapterConfig
from .methods.bitfit import BitFitConfig
from .methods.full import FullFineTuneConfig
from .methods.inducer_tuning import InducerConfig
from .methods.kernel_mix import KernelMixConfig
from .methods.lora import LoRAConfig
from .methods.mam import MAMConfig
from .methods.prefix_tuning import PrefixConfig
from .peft_interop import export_peft, import_peft
from .presets import PRESETS, preset

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterFormatError",
    "BitFitConfig",
    "ConflictError",
    "FullFineTuneConfig",
    "InducerConfig",
    "KernelMixConfig",
    "LoRAConfig",
    "MAMConfig",
    "ParameterCount",
    "PrefixConfig",
    "UnsupportedModelError",
    "attach",
    "attention_path",
    "count_parameters",
    "detach",
    "export_peft",
    "fingerprint",
    "import_peft",
    "load_adapter",
    "merge",
    "preset",
    "PRESETS",
    "save_adapter",
    "unmerge",
    "set_attention_path",
]
