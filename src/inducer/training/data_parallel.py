"""Data parallelism and devices for the training loop, through ``accelerate``.

Every process walks the same global order of batches and takes its contiguous share (``shard``) of
each; ``weight_by_share`` weights its loss so that the all-reduced gradient equals the single-process
gradient of the same global batch.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def shard(indices: list[int], rank: int, processes: int) -> list[int]:
    """Process ``rank``'s contiguous share of one global batch (sizes differ by at most one)."""
    size, extra = divmod(len(indices), processes)
    start = rank * size + min(rank, extra)
    return indices[start : start + size + (rank < extra)]


def launched_processes() -> int:
    """How many processes the launcher (``accelerate launch``, ``torchrun``) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_processes() -> bool:
    """True when several processes were launched (``accelerate launch --multi_gpu --num_processes P``
    or ``torchrun``) on a machine without a GPU.

    Without a GPU, accelerate would make each of them a separate single-process run (all writing the
    same files) unless told to use the CPU, which selects the gloo backend: pass this as ``cpu=`` to
    the first ``Accelerator`` / ``PartialState``.
    """
    return launched_processes() > 1 and not torch.cuda.is_available()


def make_accelerator(precision: str):
    """The run's ``Accelerator`` (fp16 falls back to float32 without CUDA, with a warning), and
    whether it shards parameters across processes (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if precision == "fp16" and not torch.cuda.is_available():
        logger.warning("precision fp16 needs a CUDA GPU; training in float32 on this machine")
        precision = "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu_processes())
    launched = launched_processes()
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched but accelerate set up {accelerator.num_processes}: "
            "each would train alone and overwrite the others' files. Check the accelerate config "
            "(`accelerate env`); on CPUs launch with `accelerate launch --multi_gpu --num_processes N`."
        )
    # Parameters split across processes: adapters are gathered before saving; no trainer checkpoint.
    sharded = accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    return accelerator, sharded


def weight_by_share(accelerator, loss: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data parallelism: this process's mean ``loss`` over ``count`` items, re-weighted so that the
    all-reduce (a mean over processes) of its gradient is the gradient of the global batch's mean;
    also returns that global mean loss (the same on every process)."""
    processes = accelerator.num_processes
    totals = torch.stack([loss.detach().float() * count, torch.tensor(float(count), device=loss.device)])
    totals = accelerator.reduce(totals, reduction="sum")
    items = totals[1].clamp(min=1.0)
    return loss * (count * processes / items), totals[0] / items


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective: every process must call it). A stop
    request that reached only some processes so stops all of them after the same step."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)
