"""The training loop behind ``inducer train`` / ``compare`` / ``demo``, and evaluation.

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
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import metrics as metric_fns
from .adapter import count_parameters
from .adapter_format import fingerprint, save_adapter
from .base_models import LoadedModel
from .encoding import (
    IGNORE,
    Collator,
    EncodeOptions,
    encode_classification,
    encode_generation,
    fit_to_model,
    prompt_ids,
)
from .tasks import TaskData, group_references
from .training_config import PRECISIONS, TrainConfig  # noqa: F401  (PRECISIONS: re-exported)

logger = logging.getLogger(__name__)
RUN_FILE = "inducer_run.json"  # written next to each saved adapter: what eval/generate need to reuse it
STATE_FILE = "trainer_state.pt"


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


def encode_options(task: TaskData, loaded: LoadedModel, config: TrainConfig) -> EncodeOptions:
    """The task's prompt format with the run's length limits, fitted to the model's positions."""
    options = EncodeOptions(
        config.max_length, config.max_target_length, task.spec.separator, task.spec.truncate_source
    )
    decoder_only = task.kind == "generation" and not loaded.is_seq2seq
    return fit_to_model(options, loaded.max_positions, decoder_only)


def _limit(dataset, count: int | None):
    """At most ``count`` rows: a fixed-seed random sample, since files are often sorted (by label, by
    source) and their first rows would be a biased subset."""
    if count is None or count >= len(dataset):
        return dataset
    return dataset.shuffle(seed=0).select(range(count)).flatten_indices()


def encode_split(
    task: TaskData, split: str, loaded: LoadedModel, options: EncodeOptions, limit: int | None = None
):
    """Tokenised rows of ``split`` (at most ``limit`` source rows) for training or loss evaluation."""
    dataset = _limit(task.split(split), limit)
    if task.kind == "generation":
        return encode_generation(dataset, loaded.tokenizer, options, loaded.is_seq2seq, split)
    return encode_classification(dataset, loaded.tokenizer, options.max_length, split)


def compute_loss(
    model: nn.Module, batch: dict, kind: str, seq2seq: bool, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Mean loss of a batch and the number of items it averages over (tokens or examples).

    Computed here rather than by the model so that label smoothing applies to every kind and the loss
    of generation covers target tokens only (labels -100 elsewhere).
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if kind == "generation":
        if seq2seq:
            logits = model(**inputs, labels=labels).logits  # labels build the decoder inputs
            gold = labels
        else:
            logits = model(**inputs).logits[:, :-1]
            gold = labels[:, 1:]
        count = int((gold != IGNORE).sum())
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            gold.reshape(-1),
            ignore_index=IGNORE,
            label_smoothing=label_smoothing,
        )
        return loss, count
    logits = model(**inputs).logits
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float()), len(labels)
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing), len(labels)


def _loader(dataset, batch_size: int, collator: Collator, order: list[int] | None = None):
    """Batches of ``dataset`` in ``order`` (default: as stored)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=order if order is not None else None, collate_fn=collator
    )


def _length_order(dataset) -> list[int]:
    # Evaluating in length order wastes far less compute on padding; results are put back in order.
    return sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    encoded,
    tokenizer,
    batch_size: int,
    regression: bool,
    device: torch.device | None = None,
) -> list:
    """Predicted class ids (or regression values) of encoded rows, in their stored order."""
    model.eval()
    device = device or next(model.parameters()).device
    order = _length_order(encoded)
    collator = Collator(tokenizer.pad_token_id, regression=regression)
    outputs: list = []
    for batch in _loader(
        encoded.remove_columns(["labels"]) if "labels" in encoded.column_names else encoded,
        batch_size,
        collator,
        order,
    ):
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        outputs += logits.squeeze(-1).float().tolist() if regression else logits.argmax(-1).tolist()
    result: list = [None] * len(order)
    for position, index in enumerate(order):
        result[index] = outputs[position]
    return result


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer,
    sources: list[str],
    options: EncodeOptions,
    seq2seq: bool,
    batch_size: int = 16,
    num_beams: int = 1,
    max_new_tokens: int = 40,
    progress: bool = False,
) -> list[str]:
    """Greedy (``num_beams=1``) or beam-search outputs for ``sources``, with the KV cache."""
    model.eval()
    device = next(model.parameters()).device
    prompts, truncated = prompt_ids(sources, tokenizer, options, seq2seq)
    if truncated:
        logger.warning(
            "%d of %d inputs were longer than %d tokens and were truncated",
            truncated,
            len(sources),
            options.max_length,
        )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    # Decoder-only models continue the prompt: pad on the left so every row ends at the same position.
    collator = Collator(tokenizer.pad_token_id, side="right" if seq2seq else "left")
    texts: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
    for start in tqdm(range(0, len(order), batch_size), desc="generating", leave=False, disable=not progress):
        chunk = order[start : start + batch_size]
        batch = collator([{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
            use_cache=True,
        )
        new = out if seq2seq else out[:, batch["input_ids"].shape[1] :]
        for i, row in zip(chunk, new, strict=True):
            texts[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return texts


@torch.no_grad()
def evaluation_loss(model: nn.Module, encoded, tokenizer, kind: str, seq2seq: bool, batch_size: int) -> float:
    """Mean loss over all items (target tokens or examples) of an encoded split, without smoothing."""
    model.eval()
    device = next(model.parameters()).device
    collator = Collator(tokenizer.pad_token_id, regression=kind == "regression")
    total, count = 0.0, 0
    for batch in _loader(encoded, batch_size, collator, _length_order(encoded)):
        loss, n = compute_loss(model, {k: v.to(device) for k, v in batch.items()}, kind, seq2seq)
        total += float(loss) * n
        count += n
    return total / max(count, 1)


def evaluate(
    model: nn.Module,
    loaded: LoadedModel,
    task: TaskData,
    split: str,
    options: EncodeOptions,
    batch_size: int = 64,
    limit: int | None = None,
    text_metrics: bool = True,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    progress: bool = False,
    encoded=None,
) -> dict:
    """Metrics of ``model`` on ``split``: the task's metrics, plus loss (and perplexity for generation).

    For generation, ``text_metrics=False`` skips decoding (loss and perplexity only: fast, for early
    stopping as in the paper); each distinct source is generated once and scored against all its
    references.
    """
    tokenizer = loaded.tokenizer
    if encoded is None:
        encoded = encode_split(task, split, loaded, options, limit)
    out: dict[str, float] = {}
    if task.kind == "generation":
        loss = evaluation_loss(model, encoded, tokenizer, "generation", loaded.is_seq2seq, batch_size)
        out.update(loss=loss, perplexity=math.exp(min(loss, 50.0)))
        if text_metrics:
            sources, references = group_references(_limit(task.split(split), limit))
            texts = generate_texts(
                model,
                tokenizer,
                sources,
                options,
                loaded.is_seq2seq,
                batch_size=max(1, batch_size // 4),
                num_beams=num_beams,
                max_new_tokens=max_new_tokens or task.spec.max_new_tokens,
                progress=progress,
            )
            out.update(metric_fns.generation_metrics(texts, references, task.spec.metrics))
        return out
    regression = task.kind == "regression"
    predictions = predict_labels(model, encoded, tokenizer, batch_size, regression)
    gold = encoded["labels"]
    if regression:
        out.update(metric_fns.regression_metrics(predictions, gold))
    else:
        out.update(metric_fns.classification_metrics(predictions, gold, task.num_labels))
    return out


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # The usual convention (BERT, the HF Trainer): no decay on biases and normalisation weights.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shard(indices: list[int], rank: int, processes: int) -> list[int]:
    """Process ``rank``'s contiguous share of one global batch (sizes differ by at most one)."""
    size, extra = divmod(len(indices), processes)
    start = rank * size + min(rank, extra)
    return indices[start : start + size + (rank < extra)]


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # A pure function of (seed, epoch): resuming recomputes the same order and skips what was seen.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _enable_checkpointing(model: nn.Module) -> None:
    kwargs = {"use_reentrant": False}  # non-reentrant: works with a frozen base (no input grads needed)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; training stopped before updating the weights."""


class Trainer:
    """Trains an adapted model (``inducer.attach`` already applied) on a task.

    ``output_dir`` (optional) receives ``best/`` and ``last/`` adapters, ``checkpoint/`` (for
    ``resume``), ``metrics.jsonl`` and ``tensorboard/``. ``run_info`` is written next to each saved
    adapter as ``inducer_run.json``. ``on_eval(step, metrics)`` is called after each evaluation.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        task: TaskData,
        config: TrainConfig,
        output_dir: str | Path | None = None,
        run_info: dict | None = None,
        progress: bool = True,
        on_eval: Callable[[int, dict], None] | None = None,
    ):
        from accelerate import Accelerator

        self.loaded, self.task, self.config = loaded, task, config
        self.output_dir = Path(output_dir) if output_dir else None
        self.run_info = run_info or {}
        self.on_eval = on_eval
        precision = config.precision
        if precision == "fp16" and not torch.cuda.is_available():
            logger.warning("precision fp16 needs a CUDA GPU; training in float32 on this machine")
            precision = "no"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu_processes())
        launched = launched_processes()
        if launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"{launched} processes were launched but accelerate set up {self.accelerator.num_processes}: "
                "each would train alone and overwrite the others' files. Check the accelerate config "
                "(`accelerate env`); on CPUs launch with `accelerate launch --multi_gpu --num_processes N`."
            )
        self.is_main = self.accelerator.is_main_process
        from accelerate.utils import DistributedType

        # Parameters split across processes: adapters are gathered before saving; no trainer checkpoint.
        self.sharded = self.accelerator.distributed_type == DistributedType.FSDP or (
            self.accelerator.distributed_type == DistributedType.DEEPSPEED
            and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )
        self.progress = progress and self.is_main  # one progress bar, not one per process
        self.kind = task.kind
        self.seq2seq = loaded.is_seq2seq
        self.options = encode_options(task, loaded, config)
        # Generation selects on validation loss (the paper's early stopping on perplexity) unless a text
        # metric is asked for, which makes every evaluation decode the validation set.
        self.select = config.select_metric or (task.spec.select if self.kind != "generation" else "loss")
        self.text_metrics = self.kind == "generation" and self.select not in ("loss", "perplexity")
        self.writer = None
        self._encoded_eval = None  # the validation split, tokenised once by train()

    # -- bookkeeping -------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.output_dir is None or not self.is_main:
            return
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])

    def _truncate_log(self, step: int) -> None:
        """On resume, drop what a crashed run logged after its last checkpoint (it is redone)."""
        path = self.output_dir / "metrics.jsonl" if self.output_dir is not None else None
        if not self.is_main or path is None or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def _open_writer(self):
        if self.output_dir is None or not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("TensorBoard logs skipped: pip install tensorboard")
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _save_adapter(self, name: str, extra: dict | None = None) -> Path | None:
        if self.output_dir is None:
            return None
        # Under FSDP / ZeRO-3 each process holds shards: gather the full tensors (a collective, so
        # every process takes part) before the main process writes them.
        full = self.accelerator.get_state_dict(self.model) if self.sharded else None
        if not self.is_main:
            return None
        folder = self.output_dir / name
        # The model as attach left it (not a wrapper: FSDP's would prefix every parameter name), and
        # the base's fingerprint from before any wrapper sharded its parameters.
        save_adapter(self.loaded.model, folder, state_dict=full, base_model=self._base_fingerprint)
        (folder / RUN_FILE).write_text(json.dumps({**self.run_info, **(extra or {})}, indent=2))
        return folder

    def _trainable(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)

    def _save_checkpoint(self, state: dict) -> None:
        if self.output_dir is None or self.sharded:  # sharded: refused with save_every/resume (train())
            return
        # Every process's RNG state (dropout differs per process); collected on all, written by the main.
        rng = [_rng_state()]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rng = gather_object(rng)
        if not self.is_main:
            return
        folder = self.output_dir / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            **state,
            "trainable": self._trainable(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "processes": self.accelerator.num_processes,
        }
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(folder / STATE_FILE)  # atomic: an interrupted save keeps the previous checkpoint

    # -- the loop ----------------------------------------------------------------------------------
    def evaluate(self, split: str = "validation", text_metrics: bool | None = None) -> dict:
        """Metrics of the current model on ``split`` (limited to ``max_eval_examples``)."""
        model = self.accelerator.unwrap_model(self.model)
        encoded = self._encoded_eval if split == "validation" else None
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
            encoded=encoded,
        )
        model.train()
        return result

    def train(self, resume: bool = False) -> TrainResult:
        """Run training; with ``resume``, continue from ``output_dir/checkpoint``.

        At the end the model holds the best parameters found (by the validation ``select`` metric).
        """
        config = self.config
        set_seed(config.seed)
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        if rank:  # other processes draw their own dropout masks (the data order is seeded separately)
            torch.manual_seed(config.seed + 7919 * rank)
        train = encode_split(self.task, "train", self.loaded, self.options, config.max_train_examples)
        self._encoded_eval = encode_split(
            self.task, "validation", self.loaded, self.options, config.max_eval_examples
        )
        model = self.loaded.model
        if config.gradient_checkpointing:
            _enable_checkpointing(model)
        groups = _parameter_groups(model, config.weight_decay)
        if not any(g["params"] for g in groups):
            raise ValueError("the model has no trainable parameters; attach a method first")
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps)
        per_epoch = math.ceil(len(train) / config.batch_size)
        steps_per_epoch = max(1, math.ceil(per_epoch / config.grad_accum))  # a last partial step too
        total = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
        warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total)

        def schedule(step: int) -> float:  # linear warmup, then linear decay to 0
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self._base_fingerprint = fingerprint(model)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.sharded and (resume or config.save_every):
            raise ValueError(
                "--save-every / --resume are not supported with sharded parameters (FSDP, DeepSpeed "
                "ZeRO-3) yet: the trainer checkpoint holds whole tensors. Use DDP or ZeRO-2 to resume."
            )
        self.scheduler = scheduler
        device = self.accelerator.device
        collator = Collator(self.loaded.tokenizer.pad_token_id, regression=self.kind == "regression")
        eval_every = config.eval_every or steps_per_epoch

        state = {
            "step": 0,
            "epoch": 0,
            "batch": 0,
            "best": None,
            "best_step": 0,
            "bad_evals": 0,
            "history": [],
            "train_seconds": 0.0,
        }
        best_tensors = None
        if resume:
            state, best_tensors = self._load_checkpoint(state)
            self._truncate_log(state["step"])
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.writer = self._open_writer()

        count = count_parameters(self.accelerator.unwrap_model(self.model))
        logger.info(
            "training %s steps (%d per epoch) on %d rows%s; %s",
            total,
            steps_per_epoch,
            len(train),
            f", each global batch split over {processes} processes" if processes > 1 else "",
            count,
        )
        self.model.train()
        bar = tqdm(
            total=total, initial=state["step"], desc="training", disable=not self.progress, leave=False
        )
        started = time.perf_counter() - state["train_seconds"]
        running, micro = 0.0, 0
        stopped = False
        while state["step"] < total and not stopped:
            order = _epoch_order(len(train), config.seed, state["epoch"])
            batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            while state["batch"] < len(batches) and state["step"] < total:
                rows = batches[state["batch"]]
                mine = shard(rows, rank, processes)
                # A process left without rows (a last batch smaller than the process count) still runs
                # one row with weight 0, so that every process joins the gradient all-reduce.
                batch = collator([train[i] for i in (mine or rows[:1])])
                batch = {k: v.to(device) for k, v in batch.items()}
                with self.accelerator.autocast():
                    loss, items = compute_loss(
                        self.model, batch, self.kind, self.seq2seq, config.label_smoothing
                    )
                if processes > 1:
                    loss, global_loss = self._weight_by_share(loss, items if mine else 0)
                else:
                    global_loss = loss.detach()
                if not torch.isfinite(global_loss).all():
                    # Stop before the bad gradient reaches the weights or a checkpoint.
                    bar.close()
                    kept = (f"the last checkpoint in {self.output_dir / 'checkpoint'} is kept (resume "
                            "with --resume)" if self.output_dir is not None else "no checkpoint was written")
                    raise NonFiniteLossError(
                        f"training loss is {float(global_loss)} at optimizer step {state['step'] + 1} "
                        f"(epoch {state['epoch']}, batch {state['batch']}); {kept}. Lower the learning "
                        "rate (--lr), clip gradients harder (max_grad_norm), or use float32 precision."
                    )
                self.accelerator.backward(loss / config.grad_accum)
                running += float(global_loss)
                micro += 1
                state["batch"] += 1
                if micro % config.grad_accum and state["batch"] < len(batches):
                    continue
                if config.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                bar.update(1)
                mean_loss, running, micro = running / micro, 0.0, 0
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if state["step"] % config.log_every == 0:
                    self._log(
                        {
                            "step": state["step"],
                            "epoch": state["epoch"],
                            "split": "train",
                            "loss": mean_loss,
                            "lr": self.scheduler.get_last_lr()[0],
                        }
                    )
                at_end = state["step"] >= total
                if state["step"] % eval_every == 0 or at_end:
                    state["train_seconds"] = time.perf_counter() - started
                    best_tensors, stopped = self._evaluate_and_select(state, best_tensors)
                    started = time.perf_counter() - state["train_seconds"]
                    if stopped:
                        break
                if config.save_every and state["step"] % config.save_every == 0:
                    state["train_seconds"] = time.perf_counter() - started
                    self._save_checkpoint({**state, "best_tensors": best_tensors})
            if state["batch"] >= len(batches):
                state["epoch"] += 1
                state["batch"] = 0
        bar.close()
        state["train_seconds"] = time.perf_counter() - started
        self._save_adapter("last", {"step": state["step"]})
        self._save_checkpoint({**state, "best_tensors": best_tensors})
        if best_tensors is not None:
            self._restore(best_tensors)
        if self.writer is not None:
            self.writer.close()
        self.accelerator.wait_for_everyone()  # the main process's files exist when any process returns
        return TrainResult(
            state["best"],
            state["best_step"],
            self.select,
            state["step"],
            state["train_seconds"],
            state["history"],
            stopped,
        )

    def _weight_by_share(self, loss: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Data parallelism: this process's mean ``loss`` over ``count`` items, re-weighted so that the
        all-reduce (a mean over processes) of its gradient is the gradient of the global batch's mean;
        also returns that global mean loss (the same on every process)."""
        processes = self.accelerator.num_processes
        totals = torch.stack([loss.detach().float() * count, torch.tensor(float(count), device=loss.device)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        items = totals[1].clamp(min=1.0)
        return loss * (count * processes / items), totals[0] / items

    def _evaluate_and_select(self, state: dict, best_tensors):
        """Evaluate on validation, keep the best parameters, and decide on early stopping."""
        result = self.evaluate("validation")
        if self.select not in result:
            raise ValueError(
                f"select metric {self.select!r} is not among the validation metrics {sorted(result)}"
            )
        record = {
            "step": state["step"],
            "epoch": state["epoch"],
            "split": "validation",
            **result,
            "train_seconds": state["train_seconds"],
        }
        state["history"].append(record)
        self._log(record)
        if self.on_eval is not None:
            self.on_eval(state["step"], result)
        value = result[self.select]
        if metric_fns.better(self.select, value, state["best"]):
            state["best"], state["best_step"], state["bad_evals"] = value, state["step"], 0
            best_tensors = self._trainable()
            self._save_adapter("best", {"step": state["step"], "validation": result})
        else:
            state["bad_evals"] += 1
        patience = self.config.patience
        stop = patience is not None and state["bad_evals"] >= patience
        if stop:
            logger.info(
                "early stopping at step %d: no better %s for %d evaluations",
                state["step"],
                self.select,
                patience,
            )
        return best_tensors, stop

    def _load_checkpoint(self, state: dict):
        path = self.output_dir / "checkpoint" / STATE_FILE if self.output_dir else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {path}; train without --resume first (with "
                "--save-every N to checkpoint during training)"
            )
        saved = torch.load(path, map_location="cpu", weights_only=False)
        self._restore(saved.pop("trainable"))
        self.optimizer.load_state_dict(saved.pop("optimizer"))
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        rng = saved.pop("rng")
        if isinstance(rng, dict):  # a checkpoint from before RNG states were kept per process
            rng = [rng]
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        if saved.pop("processes", 1) != processes:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: the data order and "
                "the parameters continue exactly, the dropout random streams do not",
                len(rng),
                processes,
            )
        _set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        best_tensors = saved.pop("best_tensors", None)
        state.update(saved)
        logger.info("resumed at step %d (epoch %d, batch %d)", state["step"], state["epoch"], state["batch"])
        return state, best_tensors
