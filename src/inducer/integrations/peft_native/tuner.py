"""``InducerTuner``: the PEFT ``BaseTuner`` of inducer adapters.

It does not find target modules by name as LoRA does: inducer's ``attach`` finds every attention
module of any transformers model itself, so :meth:`InducerTuner.inject_adapter` calls it (without
inducer's own save hooks: ``save_pretrained`` stays PEFT's or transformers') and moves the new modules
into PEFT's layout (:mod:`.layer`). Everything inducer's ``attach`` gives holds therefore under PEFT
too: the same tensors and outputs, gradient checkpointing, half-precision and quantized bases (adapter
tensors in float32), several adapters on one base, and per-row routing: ``adapter_names=[...]`` in
``PeftModel.forward`` / ``generate`` reaches :meth:`InducerTuner._enable_peft_forward_hooks`, which
routes each row to its adapter (``"__base__"``: no adapter) in one batched pass.
"""

from __future__ import annotations

from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import set_additional_trainable_modules
from torch import nn

from ...core.naming import check_adapter_name
from ...errors import AdapterFormatError, UsageError
from ...io.base_identity import fingerprint
from ...runtime.adapter import attach_methods, detach
from ...runtime.named_adapters import route
from ...runtime.state import adapter_state
from .checks import check_tensors, expected_peft_tensors
from .layer import InducerTunerLayer, relocate, remove_holders
from .registration import PREFIX

BASE = "__base__"  # PEFT's name for rows that use no adapter
__all__ = ["BASE", "InducerTuner"]


class InducerTuner(BaseTuner):
    """PEFT's tuner for ``InducerPeftConfig`` (registered as ``PeftType.INDUCER``, prefix ``inducer_``)."""

    prefix: str = PREFIX
    tuner_layer_cls = InducerTunerLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        return peft_config  # attach finds the attention modules itself: no target_modules to infer

    @staticmethod
    def _check_target_module_exists(peft_config, key: str) -> bool:
        return False  # never called: inject_adapter below does not match module names

    def _create_and_replace(self, *args, **kwargs) -> None:
        raise NotImplementedError("InducerTuner injects through inducer.attach (inject_adapter)")

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        """Attach the adapter's methods to ``model`` as the inducer adapter ``adapter_name``, in PEFT's
        layout; then PEFT's housekeeping (active adapter, frozen base, ``modules_to_save``)."""
        config = self.peft_config[adapter_name]
        check_adapter_name(adapter_name)
        self._check_new_adapter_config(config)
        configs = config.method_configs()
        base = self._base_fingerprint(model)
        self._check_base(model, config, base)
        # attach freezes every parameter but the active adapters'; the trainable copies that PEFT's
        # modules_to_save wrappers hold for other adapters must keep their flags.
        before = {id(p): p.requires_grad for p in model.parameters()}
        first = adapter_state(model) is None
        attach_methods(model, configs, train_head=False, name=adapter_name)
        for p in model.parameters():
            if id(p) in before and not first:
                p.requires_grad_(before[id(p)])
        record = relocate(model, adapter_name)
        self.targeted_module_names.extend(m.rsplit(".", 3)[0] for m in record.added)
        if config.base_model_fingerprint is None:
            config.base_model_fingerprint = base
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        self._mark_only_adapters_as_trainable(model)
        set_additional_trainable_modules(model=model, peft_config=config,
                                         model_config=BaseTuner.get_model_config(self),
                                         adapter_name=adapter_name,
                                         activate_adapter=adapter_name in self.active_adapters)

    def _base_fingerprint(self, model: nn.Module) -> dict:
        """The base's :func:`inducer.fingerprint`, taken before PEFT's ``modules_to_save`` wrappers renamed
        its tensors: recorded by the model's first inducer adapter, else taken now."""
        state = adapter_state(model)
        for name, config in self.peft_config.items():
            if state is not None and name in state.adapters and config.base_model_fingerprint is not None:
                return config.base_model_fingerprint
        return fingerprint(model)

    @staticmethod
    def _check_base(model: nn.Module, config, base: dict) -> None:
        """Refuse, before anything changes, an adapter saved from another base (its fingerprint is
        recorded in adapter_config.json) or whose saved tensors do not fit this model."""
        recorded = config.base_model_fingerprint
        if recorded is not None and recorded != base:
            raise AdapterFormatError(
                "this inducer adapter was trained on a different base model "
                f"({recorded.get('architecture')}, "
                f"{recorded.get('num_parameters')} parameters); load the base it was trained on")
        found = getattr(config, "_checked_tensors", None)
        if found is not None:
            check_tensors(expected_peft_tensors(model, config), found)

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` (or a list: composed in that order) the active adapter(s)."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False,
                                     safe_merge: bool = False, adapter_names=None):
        if merge:
            raise UsageError("inducer adapters act inside attention and cannot be merged into the weights; "
                             "use unload() to get the base model back, or keep the PeftModel")
        if adapter_state(self.model) is not None:
            detach(self.model)
        remove_holders(self.model)
        return self.model

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Route row i of this forward / generate call to ``adapter_names[i]`` (``"__base__"``: none)."""
        names = kwargs.pop("adapter_names", None)
        if names is None:
            yield
            return
        if isinstance(names, str) or not len(names):
            raise UsageError(f"adapter_names: give one adapter name (or '{BASE}') per row, got {names!r}")
        with route(self.model, [None if n == BASE else n for n in names]):
            yield
