"""inducer where PEFT users work: transformers' ``Trainer``, TRL's trainers, ``save_pretrained``.

* :mod:`.save_hooks`: ``model.save_pretrained`` of an adapted model writes the adapter only.
* :mod:`.trainer`: :func:`inducer_trainer` / :class:`InducerTrainer` resume from and load the best
  of inducer checkpoints. TRL's trainers are ``Trainer`` subclasses: ``inducer_trainer(SFTTrainer)``.

The Hub (``inducer.from_pretrained``, ``inducer.push_to_hub``) lives in :mod:`inducer.io.hub`. Names are
imported on first use, so ``inducer.attach`` (which installs the save hooks) does not import
transformers' ``Trainer``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "InducerTrainer": "trainer", "InducerTrainerMixin": "trainer", "inducer_trainer": "trainer",
    "has_adapter": "save_hooks", "install_save_hooks": "save_hooks", "remove_save_hooks": "save_hooks",
    "restore_adapter": "save_hooks", "save_pretrained": "save_hooks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inducer.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
