"""The training loop behind ``inducer train`` / ``compare`` / ``demo``.

AdamW with linear warmup and decay, weight decay (not on biases and LayerNorm weights), gradient
accumulation, gradient clipping, evaluation every N steps (or each epoch) with model selection and
early stopping, best and last adapters in the core's adapter format, ``metrics.jsonl`` and
TensorBoard logs, and ``resume`` that restores the trained tensors, the optimizer, the scheduler,
the random number generators and the position in the data order. Devices, mixed precision and
data parallelism come from ``accelerate``.

Data parallelism (``accelerate launch --num_processes P -m inducer train ...``): every process walks
the same global order of batches; each takes its contiguous share of every global batch, and its loss
is weighted by its share of the batch's loss items (examples or target tokens), so that the
all-reduced gradient equals the single-process gradient of the same global batch. Only the main
process writes adapters, checkpoints and logs; the checkpoint holds every process's RNG state.

Evaluation lives in ``evaluation``, the ``--resume`` checkpoint in ``checkpoint``, tokenising in
``encoding``, the training options in ``training_config``, data parallelism in ``data_parallel``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import metrics as metric_fns
from ..data.base_models import LoadedModel
from ..data.encoding import Collator, EncodeOptions, encode_options, encode_split
from ..data.tasks import TaskData
from ..errors import (
    ConfigError,
    NonFiniteLossError,  # noqa: F401 (defined in the error taxonomy, raised here)
    TaskError,
)
from ..io.adapter_format import fingerprint
from ..runtime.adapter import count_parameters
from .callbacks import EvalFunction, MetricsLog, TrainerCallback
from .checkpoint import TrainState, copy_into
from .config import TrainConfig
from .data_parallel import any_process, make_accelerator, shard, weight_by_share
from .evaluation import compute_loss, evaluate
from .files import (
    load_checkpoint,
    save_checkpoint,
    save_run_adapter,
    trainable_tensors,
)
from .interrupts import StopRequests, interrupted
from .optimization import build_optimizer, enable_checkpointing
from .progress import progress_bar
from .run_folder import folder_lock
from .run_records import RunRecord

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run achieved."""

    best_metric: float | None
    best_step: int
    select_metric: str
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # A pure function of (seed, epoch): resuming recomputes the same order and skips what was seen.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class Trainer:
    """Trains an adapted model (``inducer.attach`` already applied) on a task.

    ``output_dir`` (optional) receives ``best/`` and ``last/`` adapters, ``checkpoint/`` (for
    ``resume``), ``metrics.jsonl`` and ``tensorboard/``. ``record`` (a ``RunRecord``) is written next
    to each saved adapter as ``inducer_run.json``, with the adapter's step and validation metrics.
    ``callbacks`` are ``TrainerCallback``s; ``on_eval(step, metrics)`` is a shortcut for one with only
    ``on_eval``. ``options`` are the encoding options (default: ``encode_options(task, loaded,
    config)``), ``train_rows`` / ``eval_rows`` the tokenised train and validation splits (default:
    ``encode_split`` of each, limited by the config), for callers that already have them. The model,
    optimizer and data are prepared once, by ``prepare()``, which ``train()`` and ``evaluate()`` call.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        task: TaskData,
        config: TrainConfig,
        output_dir: str | Path | None = None,
        record: RunRecord | None = None,
        progress: bool = True,
        on_eval: Callable[[int, dict], None] | None = None,
        *,
        callbacks: Sequence[TrainerCallback] = (),
        options: EncodeOptions | None = None,
        train_rows=None,
        eval_rows=None,
    ):
        self.loaded, self.task, self.config = loaded, task, config
        self.output_dir = Path(output_dir) if output_dir else None
        self.record = record
        self.accelerator, self.sharded = make_accelerator(config.precision)
        self.is_main = self.accelerator.is_main_process
        self.progress = progress and self.is_main  # one progress bar, not one per process
        # Only the main process writes the log; the metrics file first, so a failing callback loses none.
        self.metrics_log = MetricsLog(self.output_dir) if self.output_dir and self.is_main else None
        self.callbacks: list[TrainerCallback] = [
            *([self.metrics_log] if self.metrics_log else []),
            *([EvalFunction(on_eval)] if on_eval is not None else []),
            *callbacks,
        ]
        self.kind = task.kind
        self.seq2seq = loaded.is_seq2seq
        self.options = options if options is not None else encode_options(task, loaded, config)
        # Generation selects on validation loss (the paper's early stopping on perplexity) unless a text
        # metric is asked for, which makes every evaluation decode the validation set.
        self.select = config.select_metric or (task.spec.select if self.kind != "generation" else "loss")
        self.text_metrics = self.kind == "generation" and self.select not in ("loss", "perplexity")
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.model = self.optimizer = self.scheduler = None  # set by prepare()

    def prepare(self) -> None:
        """Tokenise the splits, build the optimizer and its schedule, and hand the model to accelerate.

        Runs once (later calls return at once); ``train()`` and ``evaluate()`` call it.
        """
        if self.model is not None:
            return
        config = self.config
        if self.train_rows is None:
            self.train_rows = encode_split(
                self.task, "train", self.loaded, self.options, config.max_train_examples
            )
        if self.eval_rows is None:
            self.eval_rows = encode_split(
                self.task, "validation", self.loaded, self.options, config.max_eval_examples
            )
        if len(self.train_rows) == 0:  # the loop would wait forever for a first batch
            raise TaskError(
                "the training split has no rows (after --max-train-examples and dropping empty rows); "
                "give a training file with data"
            )
        model = self.loaded.model
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        per_epoch = math.ceil(len(self.train_rows) / config.batch_size)
        self.steps_per_epoch = max(1, math.ceil(per_epoch / config.grad_accum))  # a last partial step too
        self.total_steps = config.max_steps or max(1, math.ceil(self.steps_per_epoch * config.epochs))
        optimizer, self.scheduler = build_optimizer(model, config, self.total_steps)
        self.base_fingerprint = fingerprint(model)  # before any wrapper shards the parameters
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, resume: bool = False, new_schedule: bool = False) -> TrainResult:
        """Run training; with ``resume``, continue from ``output_dir/checkpoint`` (with
        ``new_schedule``: on this config's learning-rate schedule, not the saved one).

        At the end the model holds the best parameters found (by the validation ``select`` metric).
        The output folder is locked for the run. A first SIGINT / SIGTERM stops after the current
        step, saves the checkpoint and ``last/`` and raises ``TrainingInterrupted``.
        """
        config = self.config
        set_seed(config.seed)
        rank = self.accelerator.process_index
        if rank:  # other processes draw their own dropout masks (the data order is seeded separately)
            torch.manual_seed(config.seed + 7919 * rank)
        self.prepare()
        if self.sharded and (resume or config.save_every):
            raise ConfigError(
                "--save-every / --resume are not supported with sharded parameters (FSDP, DeepSpeed "
                "ZeRO-3) yet: the trainer checkpoint holds whole tensors. Use DDP or ZeRO-2 to resume."
            )
        owned = self.output_dir is not None and self.is_main
        with folder_lock(self.output_dir) if owned else contextlib.nullcontext(), StopRequests() as stop:
            state = load_checkpoint(self, new_schedule) if resume else TrainState()
            if self.metrics_log is not None:
                if resume:
                    self.metrics_log.truncate(state.step)
                self.metrics_log.open()
            try:
                stopped, halted = self._loop(state, stop)
                self._save_adapter("last", {"step": state.step})
                self._save_checkpoint(state)
            finally:
                if self.metrics_log is not None:
                    self.metrics_log.close()
            if halted:  # (a process the signal did not reach stops as SIGTERM would have)
                signum = stop.received or signal.SIGTERM
                raise interrupted(signum, state.step, self.total_steps, self.output_dir)
        if state.best_tensors is not None:
            copy_into(self.accelerator.unwrap_model(self.model), state.best_tensors)
        self.accelerator.wait_for_everyone()  # the main process's files exist when any process returns
        return TrainResult(
            state.best, state.best_step, self.select, state.step, state.train_seconds, state.history, stopped
        )

    def _loop(self, state: TrainState, stop: StopRequests) -> tuple[bool, bool]:
        """Optimizer steps from ``state`` to the end; returns (stopped early, halted on a stop request)."""
        config, total, train = self.config, self.total_steps, self.train_rows
        eval_every = config.eval_every or self.steps_per_epoch
        processes = self.accelerator.num_processes
        logger.info(
            "training %s steps (%d per epoch) on %d rows%s; %s",
            total,
            self.steps_per_epoch,
            len(train),
            f", each global batch split over {processes} processes" if processes > 1 else "",
            count_parameters(self.accelerator.unwrap_model(self.model)),
        )
        self.model.train()
        bar = progress_bar(total, "training", self.progress, initial=state.step)
        started = time.perf_counter() - state.train_seconds
        running, micro = 0.0, 0
        stopped = halted = False
        while state.step < total and not stopped and not halted:
            order = _epoch_order(len(train), config.seed, state.epoch)
            batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            while state.batch < len(batches) and state.step < total:
                running += self._forward_backward(batches[state.batch], state, bar)
                micro += 1
                state.batch += 1
                if micro % config.grad_accum and state.batch < len(batches):
                    continue
                self._optimizer_step()
                state.step += 1
                mean_loss, running, micro = running / micro, 0.0, 0
                self._report_step(state, mean_loss, bar)
                if state.step % eval_every == 0 or state.step >= total:
                    state.train_seconds = time.perf_counter() - started
                    stopped = self._evaluate_and_select(state)
                    started = time.perf_counter() - state.train_seconds  # evaluation time not counted
                    if stopped:
                        break
                if config.save_every and state.step % config.save_every == 0:
                    state.train_seconds = time.perf_counter() - started
                    self._save_checkpoint(state)
                # Only here, between optimizer steps (resumable exactly), and on every process at once.
                if any_process(self.accelerator, stop.received is not None):
                    halted = True
                    break
            if state.batch >= len(batches):
                state.epoch += 1
                state.batch = 0
        bar.close()
        state.train_seconds = time.perf_counter() - started
        return stopped, halted

    def _forward_backward(self, rows: list[int], state: TrainState, bar) -> float:
        """This process's share of one micro-batch: loss, backward; returns the global mean loss."""
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        mine = shard(rows, rank, processes)
        # A process left without rows (a last batch smaller than the process count) still runs one row
        # with weight 0, so that every process joins the gradient all-reduce.
        collator = Collator(self.loaded.tokenizer.pad_token_id, regression=self.kind == "regression")
        batch = collator([self.train_rows[i] for i in (mine or rows[:1])])
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        with self.accelerator.autocast():
            loss, items = compute_loss(
                self.model, batch, self.kind, self.seq2seq, self.config.label_smoothing
            )
        if processes > 1:
            loss, global_loss = weight_by_share(self.accelerator, loss, items if mine else 0)
        else:
            global_loss = loss.detach()
        if not torch.isfinite(global_loss).all():
            # Stop before the bad gradient reaches the weights or a checkpoint.
            bar.close()
            # Say only what is on disk: a run can diverge before its first checkpoint.
            saved = self.output_dir is not None and (self.output_dir / "checkpoint").is_dir()
            kept = (
                f"the last checkpoint in {self.output_dir / 'checkpoint'} is kept (resume from it with "
                "--resume --new-schedule and a lower --lr)"
                if saved
                else "no checkpoint had been written yet (nothing to resume from)"
            )
            raise NonFiniteLossError(
                f"training loss is {float(global_loss)} at optimizer step {state.step + 1} "
                f"(epoch {state.epoch}, batch {state.batch}); {kept}. Lower the learning "
                "rate (--lr), clip gradients harder (max_grad_norm), or use float32 precision."
            )
        self.accelerator.backward(loss / self.config.grad_accum)
        return float(global_loss)

    def _optimizer_step(self) -> None:
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _report_step(self, state: TrainState, mean_loss: float, bar) -> None:
        """Progress bar, ``on_step`` callbacks, and the training log every ``log_every`` steps."""
        lr = self.scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        for callback in self.callbacks:
            callback.on_step(state.step, mean_loss, lr)
        if state.step % self.config.log_every == 0:
            record = {"step": state.step, "epoch": state.epoch, "split": "train", "loss": mean_loss, "lr": lr}
            self._log(record)

    def evaluate(self, split: str = "validation", text_metrics: bool | None = None) -> dict:
        """Metrics of the current model on ``split`` (limited to ``max_eval_examples``); works before
        ``train()`` too (the model as it is)."""
        self.prepare()
        model = self.accelerator.unwrap_model(self.model)
        result = evaluate(
            model,
            self.loaded,
            self.task,
            split,
            self.options,
            self.config.eval_batch_size,
            self.config.max_eval_examples,
            self.text_metrics if text_metrics is None else text_metrics,
            self.config.num_beams,
            self.config.max_new_tokens,
            progress=self.progress,
            encoded=self.eval_rows if split == "validation" else None,
        )
        model.train()
        return result

    def _evaluate_and_select(self, state: TrainState) -> bool:
        """Evaluate on validation, keep the best parameters; returns whether to stop early."""
        result = self.evaluate("validation")
        if self.select not in result:
            raise ConfigError(
                f"select metric {self.select!r} is not among the validation metrics {sorted(result)}"
            )
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "split": "validation",
            **result,
            "train_seconds": state.train_seconds,
        }
        state.history.append(record)
        self._log(record)
        for callback in self.callbacks:
            callback.on_eval(state.step, result)
        value = result[self.select]
        if metric_fns.better(self.select, value, state.best):
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            state.best_tensors = trainable_tensors(self)
            self._save_adapter("best", {"step": state.step, "validation": result})
        else:
            state.bad_evals += 1
        patience = self.config.patience
        stop = patience is not None and state.bad_evals >= patience
        if stop:
            message = "early stopping at step %d: no better %s for %d evaluations"
            logger.info(message, state.step, self.select, patience)
        return stop

    # -- bookkeeping -------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        for callback in self.callbacks:
            callback.on_log(record["step"], record)

    def _save_adapter(self, name: str, extra: dict | None = None) -> Path | None:
        return save_run_adapter(self, name, extra)

    def _save_checkpoint(self, state: TrainState) -> None:
        save_checkpoint(self, state)
