"""transformers' ``Trainer`` (and every trainer built on it: TRL's ``SFTTrainer``, ``DPOTrainer``,
``GRPOTrainer``) with an inducer-adapted model.

Saving needs nothing: ``Trainer.save_model`` and its checkpoints call the model's ``save_pretrained``,
which ``inducer.attach`` points at the adapter (:mod:`inducer.integrations.save_hooks`). Loading a
checkpoint back (``train(resume_from_checkpoint=...)``, ``load_best_model_at_end=True``) needs the
trainer to recognise an inducer checkpoint, which transformers does not: :func:`inducer_trainer`
returns a subclass of any trainer class that does. Its two overrides are the Trainer methods that
load checkpoints; anything that is not an inducer checkpoint goes to the original method, so the
subclass keeps working when transformers changes how it loads its own formats.

    from transformers import Trainer
    from inducer.integrations import inducer_trainer

    trainer = inducer_trainer(Trainer)(model=inducer.attach(model, config), args=args, ...)
"""

from __future__ import annotations

from functools import cache

from transformers import Trainer

from .save_hooks import has_adapter, restore_adapter

__all__ = ["InducerTrainer", "InducerTrainerMixin", "inducer_trainer"]


class InducerTrainerMixin:
    """Loads inducer checkpoints when resuming and for ``load_best_model_at_end``; put it before the
    trainer class in the bases (``class MyTrainer(InducerTrainerMixin, SFTTrainer)``)."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if has_adapter(resume_from_checkpoint):
            # The optimizer, scheduler, RNG and trainer state are the Trainer's own files, which it
            # restores itself after this call.
            restore_adapter(self.model, resume_from_checkpoint)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if best is not None and has_adapter(best):
            restore_adapter(self.model, best)
            return None
        return super()._load_best_model()


@cache
def inducer_trainer(trainer_class: type) -> type:
    """``trainer_class`` (``transformers.Trainer`` or a subclass, e.g. ``trl.SFTTrainer``) extended to
    load inducer checkpoints; the same class object for the same argument."""
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise TypeError(f"inducer_trainer: {trainer_class!r} is not a transformers.Trainer subclass; pass "
                        "the trainer class itself, e.g. inducer_trainer(trl.SFTTrainer)")
    return type(f"Inducer{trainer_class.__name__}", (InducerTrainerMixin, trainer_class), {})


InducerTrainer = inducer_trainer(Trainer)
InducerTrainer.__doc__ = "``transformers.Trainer`` that also loads inducer checkpoints (see this module)."
