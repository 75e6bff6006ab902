"""Tokenising normalised task rows into model inputs, and padding them into batches.

Classification / regression: ``tokenizer(text, text_pair)``. Generation: the loss is on target
tokens only. A decoder-only model reads ``source + separator`` then `` target<eos>``, with label
-100 on every prompt position; an encoder-decoder reads the source and predicts the target.
Inputs longer than the limits are truncated, with one warning per split saying how many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # types only: the model loader and tasks import far more than encoding needs
    from ..training.config import TrainConfig
    from .base_models import LoadedModel
    from .tasks import TaskData

logger = logging.getLogger(__name__)
IGNORE = -100  # label of positions without loss (prompt, padding): PyTorch's cross-entropy default


@dataclass
class EncodeOptions:
    """Length limits and prompt format.

    Attributes:
        max_length: tokens of a classification input, or of a generation source (prompt).
        max_target_length: tokens of a generation target, EOS included.
        separator: text appended to a source to form a decoder-only prompt.
        truncate_source: ``"right"`` drops the end of long sources, ``"left"`` the start.
    """

    max_length: int = 128
    max_target_length: int = 64
    separator: str = " =>"
    truncate_source: str = "right"


def fit_to_model(options: EncodeOptions, max_positions: int | None, decoder_only: bool) -> EncodeOptions:
    """Shrink the limits to the model's position embeddings (with a warning) if they exceed them."""
    if max_positions is None:
        return options
    total = options.max_length + (options.max_target_length if decoder_only else 0)
    if total <= max_positions:
        return options
    if decoder_only:
        target = min(options.max_target_length, max_positions // 2)
        fitted = EncodeOptions(max_positions - target, target, options.separator, options.truncate_source)
    else:
        fitted = EncodeOptions(
            max_positions, options.max_target_length, options.separator, options.truncate_source
        )
    logger.warning(
        "max lengths %d+%d exceed the model's %d positions; using %d+%d",
        options.max_length,
        options.max_target_length if decoder_only else 0,
        max_positions,
        fitted.max_length,
        fitted.max_target_length if decoder_only else 0,
    )
    return fitted


def _warn_truncated(count: int, total: int, what: str, limit: int, split: str) -> None:
    if count:
        logger.warning(
            "%s: %d of %d %s were longer than %d tokens and were truncated (raise --max-length to keep more)",
            split,
            count,
            total,
            what,
            limit,
        )


def encode_classification(dataset, tokenizer, max_length: int, split: str = "data"):
    """Tokenised ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) and ``labels`` of a split."""
    pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
    use_pairs = pairs is not None and any(p is not None for p in pairs)
    counter = {"truncated": 0}

    def encode(batch: dict) -> dict:
        texts = batch["text"]
        second = [p or "" for p in batch["text_pair"]] if use_pairs else None
        # One extra token shows which rows were cut without a second, untruncated pass over all rows.
        probe = tokenizer(texts, second, truncation=True, max_length=max_length + 1)
        long = [i for i, ids in enumerate(probe["input_ids"]) if len(ids) > max_length]
        if long:
            counter["truncated"] += len(long)
            redo = tokenizer(
                [texts[i] for i in long],
                [second[i] for i in long] if second else None,
                truncation=True,
                max_length=max_length,
            )
            for key in probe:
                for j, i in enumerate(long):
                    probe[key][i] = redo[key][j]
        out = {key: probe[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in probe}
        out["labels"] = batch["label"]
        return out

    encoded = dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        load_from_cache_file=False,
        desc=f"tokenising {split}",
    )
    _warn_truncated(counter["truncated"], len(dataset), "inputs", max_length, split)
    return encoded


def _truncate(ids: list[int], limit: int, side: str, keep_first: int | None) -> list[int]:
    if len(ids) <= limit:
        return ids
    if side == "left":
        # Keep a leading BOS: the model was trained with it at position 0.
        if keep_first is not None and ids and ids[0] == keep_first:
            return ids[:1] + ids[len(ids) - limit + 1 :]
        return ids[len(ids) - limit :]
    return ids[:limit]


def prompt_ids(sources: list[str], tokenizer, options: EncodeOptions, seq2seq: bool) -> tuple[list, int]:
    """Token ids of the prompts of ``sources`` (truncated), and how many were truncated."""
    if seq2seq:
        # The tokenizer's own truncation keeps the closing special token (T5's and BART's EOS).
        probe = tokenizer(sources, truncation=True, max_length=options.max_length + 1)["input_ids"]
        truncated = sum(len(x) > options.max_length for x in probe)
        if truncated:
            probe = tokenizer(sources, truncation=True, max_length=options.max_length)["input_ids"]
        return probe, truncated
    texts = [s + options.separator for s in sources]
    ids = tokenizer(texts)["input_ids"]
    truncated = sum(len(x) > options.max_length for x in ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    # Keep the separator (the last tokens) of a decoder prompt: it tells the model to start the answer.
    sep_len = len(tokenizer(options.separator, add_special_tokens=False)["input_ids"])
    out = []
    for x in ids:
        if len(x) > options.max_length and sep_len and options.truncate_source == "right":
            body = _truncate(x[:-sep_len], options.max_length - sep_len, "right", bos)
            out.append(body + x[-sep_len:])
        else:
            out.append(_truncate(x, options.max_length, options.truncate_source, bos))
    return out, truncated


def target_ids(targets: list[str], tokenizer, options: EncodeOptions, seq2seq: bool) -> tuple[list, int]:
    """Token ids of the targets, ending in EOS, truncated to ``max_target_length``."""
    if seq2seq:
        ids = tokenizer(text_target=targets)["input_ids"]
        eos = []
    else:
        ids = tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    limit = options.max_target_length - len(eos)
    truncated = sum(len(x) > limit for x in ids)
    return [x[:limit] + eos if len(x) > limit else x + eos for x in ids], truncated


def encode_generation(dataset, tokenizer, options: EncodeOptions, seq2seq: bool, split: str = "data"):
    """Training rows, one per (source, target) pair, with the loss on target tokens only."""
    counter = {"source": 0, "target": 0, "rows": 0}

    def encode(batch: dict) -> dict:
        sources, targets = [], []
        for source, refs in zip(batch["source"], batch["targets"], strict=True):
            for target in refs:
                sources.append(source)
                targets.append(target)
        prompts, cut_source = prompt_ids(sources, tokenizer, options, seq2seq)
        answers, cut_target = target_ids(targets, tokenizer, options, seq2seq)
        counter["source"] += cut_source
        counter["target"] += cut_target
        counter["rows"] += len(sources)
        if seq2seq:
            return {
                "input_ids": prompts,
                "attention_mask": [[1] * len(p) for p in prompts],
                "labels": answers,
            }
        ids = [p + a for p, a in zip(prompts, answers, strict=True)]
        labels = [[IGNORE] * len(p) + a for p, a in zip(prompts, answers, strict=True)]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": labels}

    encoded = dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        load_from_cache_file=False,
        desc=f"tokenising {split}",
    )
    _warn_truncated(counter["source"], counter["rows"], "sources", options.max_length, split)
    _warn_truncated(counter["target"], counter["rows"], "targets", options.max_target_length, split)
    return encoded


def encode_options(task: TaskData, loaded: LoadedModel, config: TrainConfig) -> EncodeOptions:
    """The task's prompt format with the run's length limits, fitted to the model's positions."""
    options = EncodeOptions(
        config.max_length, config.max_target_length, task.spec.separator, task.spec.truncate_source
    )
    decoder_only = task.kind == "generation" and not loaded.is_seq2seq
    return fit_to_model(options, loaded.max_positions, decoder_only)


def limit_rows(dataset, count: int | None):
    """At most ``count`` rows: a fixed-seed random sample, since files are often sorted (by label, by
    source) and their first rows would be a biased subset."""
    if count is None or count >= len(dataset):
        return dataset
    return dataset.shuffle(seed=0).select(range(count)).flatten_indices()


def encode_split(
    task: TaskData, split: str, loaded: LoadedModel, options: EncodeOptions, limit: int | None = None
):
    """Tokenised rows of ``split`` (at most ``limit`` source rows) for training or loss evaluation."""
    dataset = limit_rows(task.split(split), limit)
    if task.kind == "generation":
        return encode_generation(dataset, loaded.tokenizer, options, loaded.is_seq2seq, split)
    return encode_classification(dataset, loaded.tokenizer, options.max_length, split)


class Collator:
    """Pads a list of encoded rows into a batch of tensors.

    Sequences are padded with the tokenizer's pad id (``labels`` with -100, ``attention_mask`` with 0);
    scalar labels are stacked (int64 for classes, float32 for regression). ``side="left"`` pads on the
    left, which batched generation with decoder-only models needs.
    """

    def __init__(self, pad_token_id: int, side: str = "right", regression: bool = False):
        self.pad_token_id = pad_token_id
        self.side = side
        self.regression = regression

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if not isinstance(values[0], list):
                dtype = torch.float32 if self.regression else torch.long
                batch[key] = torch.tensor(values, dtype=dtype)
                continue
            fill = (
                IGNORE
                if key == "labels"
                else 0
                if key in ("attention_mask", "token_type_ids")
                else self.pad_token_id
            )
            width = max(len(v) for v in values)
            padded = [
                ([fill] * (width - len(v)) + v) if self.side == "left" else (v + [fill] * (width - len(v)))
                for v in values
            ]
            batch[key] = torch.tensor(padded, dtype=torch.long)
        return batch
