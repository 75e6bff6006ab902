"""lm-evaluation-harness for inducer adapters: the ``inducer`` model type, ``hf``'s ``peft=``, a Python call.

    # command line (lm-eval has no plugin discovery, so this module's runner registers first):
    python -m inducer.integrations.lm_eval --model inducer \\
        --model_args pretrained=BASE,adapter=ADAPTER_DIR --device cpu --tasks my_task --include_path tasks/
    # lm-eval's own hf model with a PEFT-layout adapter (inducer.peft registers the PEFT type):
    python -m inducer.integrations.lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER_DIR ...
    # Python, an adapted model object (inducer.attach or a PeftModel):
    from inducer.integrations.lm_eval import evaluate
    results = evaluate(model, tokenizer, ["my_task"], include_path="tasks/")

``ADAPTER_DIR`` may be in either layout (inducer's format or PEFT's, :mod:`inducer.peft`), checked as
``inducer.load_adapter`` checks. Importing this module checks the installed lm-eval version (one
line when it is not the tested one) and imports :mod:`inducer.peft`.
"""

from __future__ import annotations

from .peft_native.versions import check_version

check_version("lm_eval", "inducer.integrations.lm_eval")

from lm_eval.api.registry import register_model  # noqa: E402 (after the version guard, on purpose)
from lm_eval.models.huggingface import HFLM  # noqa: E402

from . import peft_native as inducer_peft  # noqa: E402 (registers the INDUCER PEFT type for hf's peft=)

__all__ = ["InducerLM", "evaluate", "main"]


@register_model("inducer")
class InducerLM(HFLM):
    """lm-eval's ``HFLM`` with an inducer adapter: ``pretrained`` (a base's hub id or folder, or an
    already-adapted model object) plus ``adapter`` (a folder of either layout)."""

    def __init__(self, pretrained, adapter: str | None = None, **kwargs) -> None:
        if adapter is not None:
            if not isinstance(pretrained, str):
                raise ValueError("InducerLM: adapter= needs pretrained= to name a base model (a model object "
                                 "is evaluated as it is)")
            import transformers

            base = transformers.AutoModelForCausalLM.from_pretrained(
                pretrained, revision=kwargs.pop("revision", None) or "main",
                trust_remote_code=kwargs.get("trust_remote_code", False))
            device = kwargs.get("device")
            if device:
                base = base.to(device)
            kwargs.setdefault("tokenizer", pretrained)
            pretrained = inducer_peft.load_adapter(base, adapter).eval()
        super().__init__(pretrained=pretrained, **kwargs)


def evaluate(model, tokenizer, tasks: list[str], include_path: str | None = None, batch_size: int = 1,
             **simple_evaluate_kwargs) -> dict:
    """``lm_eval.simple_evaluate`` of an adapted model object (``inducer.attach``-ed or a ``PeftModel``)
    on ``tasks``; ``include_path``: a folder of local task YAML files. Returns lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = InducerLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else None
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, **simple_evaluate_kwargs)


def main() -> None:
    """lm-eval's command line, with the ``inducer`` model type and the INDUCER PEFT type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
