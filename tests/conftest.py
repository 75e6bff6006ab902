"""Tiny random models of every supported family, built in-process (no hub)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    EncoderDecoderModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

# Tiny models run fastest on one thread, and PyTorch's threads stall each other on a shared machine.
torch.set_num_threads(1)

VOCAB = 97
ENCODERS = ("bert", "roberta")
DECODERS = ("gpt2", "llama")
SEQ2SEQ = ("bart", "t5", "bert2bert")
FAMILIES = ENCODERS + DECODERS + SEQ2SEQ


def _bert_config(**extra) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64, **extra)


def make_model(family: str, attn: str = "sdpa", dropout: float = 0.0, seed: int = 0):
    """A tiny random model of ``family`` with ``attn`` attention, in eval mode."""
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(_bert_config(
            attention_probs_dropout_prob=dropout, hidden_dropout_prob=0.0, num_labels=3))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=70, pad_token_id=1, num_labels=2,
            attention_probs_dropout_prob=dropout, hidden_dropout_prob=0.0))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=64, attn_pdrop=dropout, resid_pdrop=0.0,
                                           embd_pdrop=0.0, pad_token_id=0, bos_token_id=1,
                                           eos_token_id=2))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2,
                                             num_attention_heads=6, num_key_value_heads=2,
                                             intermediate_size=64, max_position_embeddings=64,
                                             attention_dropout=dropout, pad_token_id=0,
                                             bos_token_id=1, eos_token_id=2))
    elif family == "bart":
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
            decoder_ffn_dim=48, max_position_embeddings=64, attention_dropout=dropout, dropout=0.0,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2))
    elif family == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=dropout, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0))
    elif family == "bert2bert":
        encoder = _bert_config(attention_probs_dropout_prob=dropout, hidden_dropout_prob=0.0)
        decoder = _bert_config(attention_probs_dropout_prob=dropout, hidden_dropout_prob=0.0,
                               is_decoder=True, add_cross_attention=True)
        from transformers import EncoderDecoderConfig

        config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 0, 3
        model = EncoderDecoderModel(config=config)
    else:
        raise ValueError(family)
    model.set_attn_implementation(attn)
    return model.eval()


def make_batch(family: str, batch: int = 3, length: int = 9, seed: int = 1, pad_side: str = "right"):
    """Token ids with ragged lengths (padding on ``pad_side``) and model kwargs for ``family``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    lengths = [length - 2 * i for i in range(batch)]
    for row, n in enumerate(lengths):
        if pad_side == "right":
            mask[row, n:] = 0
        else:
            mask[row, : length - n] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        dec = torch.randint(4, VOCAB, (batch, 5), generator=g)
        kwargs["decoder_input_ids"] = dec
    return kwargs


def logits_of(model, kwargs) -> torch.Tensor:
    return model(**kwargs).logits


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set; a test
    that runs transformers' Trainer in bf16 would otherwise make every later Accelerator() fail."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def enable_checkpointing(model) -> None:
    """What training turns on (:func:`inducer.training.optimization.enable_checkpointing`), checked to be in
    effect: the tests that compare gradients with and without it test the real call."""
    from inducer.training.optimization import enable_checkpointing as enable

    enable(model)
    assert getattr(model, "is_gradient_checkpointing", False), "gradient checkpointing did not turn on"


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens (what generate uses under left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def assert_padding_invariant(model, family: str, pad_side: str = "right") -> None:
    """Each row of a padded batch gives, on its real tokens, what the row gives run alone."""
    batch = make_batch(family, pad_side=pad_side)
    if family in DECODERS:
        batch["position_ids"] = padded_positions(batch["attention_mask"])
    out = logits_of(model, batch)
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        single = {k: v[row : row + 1] for k, v in batch.items()}
        for key in ("input_ids", "attention_mask", "position_ids"):
            if key in single:
                single[key] = single[key][:, real]
        expected = logits_of(model, single)[0]
        # Decoders: per-token logits; classifiers and seq2seq: per-sequence / per-decoder-position.
        torch.testing.assert_close(out[row][real] if family in DECODERS else out[row], expected)
