"""``import inducer.peft``: inducer-tuning as a PEFT method (see :mod:`inducer.integrations.peft_native`).

    import inducer.peft
    from peft import get_peft_model
    model = get_peft_model(model, inducer.peft.InducerPeftConfig(r_k=2, r_v=4, task_type="CAUSAL_LM"))
"""

from .integrations.peft_native import *  # noqa: F403 (this module is the public name of that package)
from .integrations.peft_native import __all__  # noqa: F401
