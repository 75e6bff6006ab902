"""Tiny models with a tiny word-level tokenizer, saved to a folder, for offline end-to-end CLI tests.

The tokenizer's vocabulary is every word of the test fixtures (lower-cased, punctuation split off), so
fixture texts tokenise without unknown words. Families: ``bert`` / ``roberta`` (classification),
``gpt2`` (a decoder whose tokenizer has no pad token, as GPT-2's has not), ``bart`` (encoder-decoder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]


def _words() -> list[str]:
    from inducer.data.tasks import e2e_synthetic

    # Saved adapters (binary: tests/fixtures/adapters, adapters_v2) and saved runs (with their own tiny
    # bases and tokenizers, tests/training/test_run_records.py) are not text fixtures.
    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(FIXTURES.rglob("*"))
                    if p.is_file() and not p.relative_to(FIXTURES).parts[0].startswith(("adapters", "runs")))
    text += " ".join(
        r["meaning_representation"] + " " + r["human_reference"]
        for r in e2e_synthetic.generate("train", 50) + e2e_synthetic.generate("test", 20)
    )
    text += " => a: tl;dr: q: "
    text = text.lower()
    # The pre-tokenizer groups runs of punctuation ("=>"); single marks are needed too ("?" before a quote).
    return sorted(set(re.findall(r"\w+|[^\w\s]+", text)) | set(re.findall(r"[^\w\s]", text)))


def make_tokenizer(family: str):
    """A word-level fast tokenizer with the special-token conventions of ``family``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + _words())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    ids = {t: vocab[t] for t in SPECIALS}
    if family in ("bert", "roberta"):
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    if family == "gpt2":  # like GPT-2: no pad token, no special tokens added
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", bos_token="[BOS]"
        )
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]",
        pair="[BOS] $A [EOS] $B [EOS]",
        special_tokens=[("[BOS]", ids["[BOS]"]), ("[EOS]", ids["[EOS]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def make_model(family: str, vocab_size: int, num_labels: int = 2):
    """A tiny random model of ``family`` (hidden 32, 2 layers)."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    if family == "bert":
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=vocab_size,
                max_position_embeddings=128,
                num_labels=num_labels,
                pad_token_id=0,
                **small,
            )
        )
    if family == "roberta":
        return RobertaForSequenceClassification(
            RobertaConfig(
                vocab_size=vocab_size,
                max_position_embeddings=130,
                num_labels=num_labels,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                **small,
            )
        )
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab_size,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=160,
                bos_token_id=4,
                eos_token_id=5,
            )
        )
    if family == "bart":
        return BartForConditionalGeneration(
            BartConfig(
                vocab_size=vocab_size,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=48,
                decoder_ffn_dim=48,
                max_position_embeddings=160,
                pad_token_id=0,
                bos_token_id=4,
                eos_token_id=5,
                decoder_start_token_id=5,
                forced_eos_token_id=5,
            )
        )
    raise ValueError(family)


def save_tiny(family: str, folder: Path) -> Path:
    """Save a tiny ``family`` model and its tokenizer to ``folder`` (a local model path for --model)."""
    tokenizer = make_tokenizer(family)
    model = make_model(family, len(tokenizer))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Local folders of a tiny model of each family, shared by the whole test session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny(family, root / family) for family in ("bert", "roberta", "gpt2", "bart")}


@pytest.fixture
def single_thread():
    """One PyTorch thread: tiny models are fastest so, and on a busy 2-core machine two threads that
    wait on each other make each step up to 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def task_dir(name: str) -> str:
    """The fixture folder of built-in task ``name`` (its hub dataset's format)."""
    return str(FIXTURES / "tasks" / name)


def run_cli(*args: str, expect: int = 0):
    """Run ``inducer ARGS`` in-process; assert its exit code; return the result (output in ``.output``)."""
    from typer.testing import CliRunner

    from inducer.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != expect:
        command = " ".join(map(str, args))
        raise AssertionError(
            f"inducer {command} exited {result.exit_code} (expected {expect}):\n{result.output}"
            + (
                f"\n{result.exception!r}"
                if result.exception and not isinstance(result.exception, SystemExit)
                else ""
            )
        )
    return result
