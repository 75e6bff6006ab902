"""Evaluation of a model on encoded rows: the loss, predicted labels, generated texts, and metrics.

``compute_loss`` is shared with the training loop, so that training and evaluation losses count the
same items (target tokens of generation, examples otherwise). Rows are evaluated in length order,
which wastes far less compute on padding, and results are put back in their stored order.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data import metrics as metric_fns
from ..data.base_models import LoadedModel
from ..data.encoding import IGNORE, Collator, EncodeOptions, encode_split, limit_rows, prompt_ids
from ..data.tasks import TaskData, group_references
from .progress import progress_bar

logger = logging.getLogger(__name__)


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
    starts = range(0, len(order), batch_size)
    bar = progress_bar(len(starts), "generating", progress)
    for start in starts:
        bar.update(1)
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
            sources, references = group_references(limit_rows(task.split(split), limit))
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
