"""Tokenisation: target-only labels, truncation warnings, padding sides and pad-token handling."""

from __future__ import annotations

import logging

import datasets
import torch

from inducer.data.encoding import (
    IGNORE,
    Collator,
    EncodeOptions,
    encode_classification,
    encode_generation,
    fit_to_model,
)

from ..tiny import make_tokenizer


def test_decoder_rows_have_labels_on_target_tokens_only():
    tokenizer = make_tokenizer("gpt2")
    rows = datasets.Dataset.from_list(
        [{"source": "name[the eagle]", "targets": ["the eagle is a pub .", "a pub ."]}]
    )
    encoded = encode_generation(
        rows, tokenizer, EncodeOptions(max_length=16, max_target_length=8), seq2seq=False
    )
    assert len(encoded) == 2  # one training row per reference
    row = encoded[0]
    prompt = tokenizer("name[the eagle] =>")["input_ids"]
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    assert row["labels"][len(prompt) :] == row["input_ids"][len(prompt) :]
    assert row["input_ids"][-1] == tokenizer.eos_token_id


def test_seq2seq_rows_and_truncation_warning(caplog):
    tokenizer = make_tokenizer("bart")
    rows = datasets.Dataset.from_list(
        [
            {
                "source": "the city council voted on tuesday to build a new bridge",
                "targets": ["council approves new bridge ."],
            }
        ]
    )
    with caplog.at_level(logging.WARNING):
        encoded = encode_generation(
            rows, tokenizer, EncodeOptions(max_length=5, max_target_length=3), True, "train"
        )
    assert len(encoded[0]["input_ids"]) == 5 and encoded[0]["input_ids"][-1] == tokenizer.eos_token_id
    assert len(encoded[0]["labels"]) == 3
    assert "1 of 1 sources were longer than 5 tokens" in caplog.text
    assert "1 of 1 targets were longer than 3 tokens" in caplog.text


def test_left_truncation_keeps_the_question_end():
    tokenizer = make_tokenizer("gpt2")
    rows = datasets.Dataset.from_list([{"source": "a b c d e f g h q: where ?", "targets": ["there"]}])
    options = EncodeOptions(max_length=6, max_target_length=4, separator=" a:", truncate_source="left")
    row = encode_generation(rows, tokenizer, options, seq2seq=False)[0]
    prompt = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE]
    assert tokenizer.decode(prompt).endswith("q : where ? a :")


def test_classification_pairs_truncate_to_the_limit(caplog):
    tokenizer = make_tokenizer("bert")
    rows = datasets.Dataset.from_list(
        [
            {"text": "a b c d e f g", "text_pair": "h i j k", "label": 1},
            {"text": "a", "text_pair": "b", "label": 0},
        ]
    )
    with caplog.at_level(logging.WARNING):
        encoded = encode_classification(rows, tokenizer, 6, "dev")
    assert [len(x) for x in encoded["input_ids"]] == [6, 5]
    assert "dev: 1 of 2 inputs were longer than 6 tokens" in caplog.text


def test_collator_pads_both_sides():
    rows = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
        {"input_ids": [5], "attention_mask": [1], "labels": [5]},
    ]
    right = Collator(pad_token_id=0)(rows)
    assert right["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert right["labels"].tolist()[1] == [5, IGNORE, IGNORE]
    left = Collator(pad_token_id=0, side="left")(rows)
    assert left["attention_mask"].tolist()[1] == [0, 0, 1]
    scalar = Collator(0, regression=True)([{"input_ids": [1], "labels": 0.5}])
    assert scalar["labels"].dtype == torch.float32


def test_limits_shrink_to_the_model_positions(caplog):
    with caplog.at_level(logging.WARNING):
        fitted = fit_to_model(EncodeOptions(max_length=512, max_target_length=64), 128, decoder_only=True)
    assert (
        fitted.max_length + fitted.max_target_length == 128
        and "exceed the model's 128 positions" in caplog.text
    )
    assert fit_to_model(EncodeOptions(max_length=600), 512, decoder_only=False).max_length == 512
