"""Tiny random configs (2 layers, width 32-64) of transformers 5 architectures, for the sweep.

Each :class:`Architecture` names a model type, the kind of model built from it (``encoder``:
masked LM, ``decoder``: causal LM, ``seq2seq``: conditional generation) and the config fields that
make it tiny. Building one takes a fraction of a second and no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
               eos_token_id=2, tie_word_embeddings=False)
_GQA_HEADS = dict(num_key_value_heads=2)  # grouped-query attention, where the family has it
# Mixtures route every token to all their (two) experts: a discrete top-1 choice could flip between
# float32 and bfloat16 and make the bf16 check measure routing, not the method.
_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
           pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, relative_attention_num_buckets=8)
_BART = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)


@dataclass(frozen=True)
class Architecture:
    """One architecture of the sweep: its model type, model kind and tiny config fields."""

    name: str
    model_type: str
    kind: str  # "encoder", "decoder" or "seq2seq"
    config: dict = field(default_factory=dict)

    def build(self, dtype: torch.dtype = torch.float32):
        """A tiny random model of this architecture (seeded, eval mode, the model's default attention)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

        auto = {"encoder": AutoModelForMaskedLM, "decoder": AutoModelForCausalLM,
                "seq2seq": AutoModelForSeq2SeqLM}[self.kind]
        config = AutoConfig.for_model(self.model_type, **self.config)
        torch.manual_seed(0)
        return auto.from_config(config, dtype=dtype).eval()


def _arch(name: str, model_type: str, kind: str, **extra) -> Architecture:
    base = {"seq2seq": _BART, "decoder": _COMMON, "encoder": _COMMON}[kind]
    return Architecture(name, model_type, kind, {**base, **extra})


ARCHITECTURES: tuple[Architecture, ...] = (
    # Encoders
    _arch("BERT", "bert", "encoder"),
    _arch("RoBERTa", "roberta", "encoder", pad_token_id=1),
    _arch("XLM-RoBERTa", "xlm-roberta", "encoder", pad_token_id=1),
    _arch("ELECTRA", "electra", "encoder", embedding_size=32),
    _arch("ALBERT", "albert", "encoder", embedding_size=32),
    _arch("DistilBERT", "distilbert", "encoder", dim=32, n_layers=2, n_heads=4, hidden_dim=48),
    _arch("ModernBERT", "modernbert", "encoder", global_attn_every_n_layers=2, local_attention=8),
    _arch("DeBERTa-v2", "deberta-v2", "encoder"),
    _arch("MPNet", "mpnet", "encoder", pad_token_id=1),
    _arch("RoFormer", "roformer", "encoder", embedding_size=32),
    _arch("Data2VecText", "data2vec-text", "encoder", pad_token_id=1),
    _arch("CamemBERT", "camembert", "encoder", pad_token_id=1),
    # Decoders
    _arch("GPT-2", "gpt2", "decoder"),
    _arch("GPT-Neo", "gpt_neo", "decoder", attention_types=[[["global", "local"], 1]], window_size=8),
    _arch("GPT-NeoX", "gpt_neox", "decoder"),
    _arch("GPT-J", "gptj", "decoder", rotary_dim=4),
    _arch("GPT-BigCode", "gpt_bigcode", "decoder"),
    _arch("Bloom", "bloom", "decoder", n_head=4),
    _arch("Falcon", "falcon", "decoder"),
    _arch("OPT", "opt", "decoder", ffn_dim=48, word_embed_proj_dim=32),
    _arch("BioGPT", "biogpt", "decoder"),
    _arch("Llama", "llama", "decoder", **_GQA_HEADS),
    _arch("Mistral", "mistral", "decoder", **_GQA_HEADS),
    _arch("Mixtral", "mixtral", "decoder", **_GQA_HEADS, num_local_experts=2, num_experts_per_tok=2),
    _arch("Qwen2", "qwen2", "decoder", **_GQA_HEADS),
    _arch("Qwen3", "qwen3", "decoder", **_GQA_HEADS, head_dim=8),
    _arch("Qwen2-MoE", "qwen2_moe", "decoder", **_GQA_HEADS, num_experts=2, num_experts_per_tok=2,
          moe_intermediate_size=16, shared_expert_intermediate_size=16),
    _arch("Phi", "phi", "decoder", **_GQA_HEADS),
    _arch("Phi-3", "phi3", "decoder", **_GQA_HEADS),
    _arch("Gemma", "gemma", "decoder", **_GQA_HEADS, head_dim=8),
    _arch("Gemma-2", "gemma2", "decoder", **_GQA_HEADS, head_dim=8, sliding_window=8),
    _arch("Gemma-3", "gemma3_text", "decoder", **_GQA_HEADS, head_dim=8, sliding_window=8),
    _arch("gpt-oss", "gpt_oss", "decoder", **_GQA_HEADS, head_dim=8, num_local_experts=2,
          num_experts_per_tok=2, sliding_window=8),
    _arch("OLMo", "olmo", "decoder", **_GQA_HEADS),
    _arch("OLMo-2", "olmo2", "decoder", **_GQA_HEADS),
    _arch("StableLM", "stablelm", "decoder", **_GQA_HEADS),
    _arch("Starcoder2", "starcoder2", "decoder", **_GQA_HEADS),
    _arch("Cohere", "cohere", "decoder", **_GQA_HEADS),
    _arch("Granite", "granite", "decoder", **_GQA_HEADS),
    _arch("SmolLM3", "smollm3", "decoder", **_GQA_HEADS),
    # Encoder-decoders
    _arch("BART", "bart", "seq2seq"),
    _arch("mBART", "mbart", "seq2seq"),
    _arch("Pegasus", "pegasus", "seq2seq"),
    _arch("Marian", "marian", "seq2seq", decoder_vocab_size=VOCAB),
    _arch("Blenderbot", "blenderbot", "seq2seq"),
    Architecture("T5", "t5", "seq2seq", _T5),
    Architecture("mT5", "mt5", "seq2seq", _T5),
    Architecture("LongT5", "longt5", "seq2seq", dict(_T5, local_radius=4)),
)
