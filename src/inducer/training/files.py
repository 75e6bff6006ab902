"""What a ``Trainer`` writes into its output folder: ``best/`` and ``last/`` adapters (each with
``inducer_run.json``) and the ``checkpoint/`` behind ``--resume``, and reading that checkpoint back.

Every file is written atomically (``inducer.io.atomic``): a crash leaves the previous version whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import torch

from ..io.adapter_format import save_adapter
from ..io.atomic import atomic_write_text
from .checkpoint import RngState, TrainState, load_train_state, restore_train_state, save_train_state
from .run_records import RUN_FILE


class Trainer(Protocol):
    """What these functions read of an :class:`inducer.training.trainer.Trainer` (a protocol, so that this
    module does not import the trainer that imports it)."""

    accelerator: Any
    base_fingerprint: Any
    config: Any
    is_main: bool
    loaded: Any
    model: Any
    optimizer: Any
    output_dir: Any
    record: Any
    scheduler: Any
    sharded: bool

logger = logging.getLogger(__name__)


def save_run_adapter(trainer: Trainer, name: str, extra: dict | None = None) -> Path | None:
    """Save the trained adapter as ``output_dir/name`` with its ``inducer_run.json``; the folder (None
    without an output folder, and in every process but the main one)."""
    if trainer.output_dir is None:
        return None
    # Under FSDP / ZeRO-3 each process holds shards: gather the full tensors (a collective, so
    # every process takes part) before the main process writes them.
    full = trainer.accelerator.get_state_dict(trainer.model) if trainer.sharded else None
    if not trainer.is_main:
        return None
    folder = trainer.output_dir / name
    # The model as attach left it (not a wrapper: FSDP's would prefix every parameter name), and
    # the base's fingerprint from before any wrapper sharded its parameters.
    save_adapter(trainer.loaded.model, folder, state_dict=full, base_model=trainer.base_fingerprint)
    # A Trainer used without a run record still says which step (and score) the adapter is from.
    record = trainer.record
    extra = extra or {}
    saved = dataclasses.replace(record, **extra).to_json() if record is not None else dict(extra)
    atomic_write_text(folder / RUN_FILE, json.dumps(saved, indent=2))
    return folder


def trainable_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Copies of the model's trainable parameters, by name."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(trainer: Trainer, state: TrainState) -> None:
    """Write ``output_dir/checkpoint``: ``state`` with the tensors, optimizer, scheduler and RNGs."""
    if trainer.output_dir is None or trainer.sharded:  # sharded: refused with save_every/resume (train())
        return
    # Every process's RNG state (dropout differs per process); collected on all, written by the main.
    rng = [RngState.capture()]
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rng = gather_object(rng)
    if not trainer.is_main:
        return
    full = dataclasses.replace(
        state,
        trainable=trainable_tensors(trainer),
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        rng=rng,
        processes=trainer.accelerator.num_processes,
    )
    save_train_state(trainer.output_dir / "checkpoint", full)


def load_checkpoint(trainer: Trainer, new_schedule: bool = False) -> TrainState:
    """The saved state, with the trained tensors, optimizer, scheduler and RNGs restored from it.

    ``new_schedule``: the learning-rate schedule continues as this run's config defines it (its
    ``lr`` and length) from the saved step on, instead of the saved one."""
    if trainer.output_dir is None:
        raise FileNotFoundError("--resume needs the output folder of the run to continue (--output)")
    saved = load_train_state(trainer.output_dir / "checkpoint")
    model = trainer.accelerator.unwrap_model(trainer.model)
    rank, processes = trainer.accelerator.process_index, trainer.accelerator.num_processes
    state = restore_train_state(saved, model, trainer.optimizer, trainer.scheduler, rank, processes)
    if new_schedule:
        # The restored scheduler holds the old peak rate; its step function is already this run's.
        scheduler = trainer.scheduler
        scheduler.base_lrs = [trainer.config.lr for _ in trainer.optimizer.param_groups]
        for group, base, factor in zip(
            trainer.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in trainer.optimizer.param_groups]
    logger.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch)
    return state
