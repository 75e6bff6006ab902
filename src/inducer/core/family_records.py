"""The family records: per-family facts about attention modules and feed-forward blocks, as data.

One frozen :class:`Family` per family in :data:`FAMILIES`, a :data:`GENERIC` record for modules of
no known family, and the attribute names every family shares. :mod:`inducer.core.families` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedForwardFacts:
    """Where a layer's feed-forward block starts and ends, relative to the module holding it.

    ``input``: the module whose input is the FFN input; ``output``: the module whose output is the
    FFN output (before dropout, residual and LayerNorm); ``first``/``last``: its first linear
    layer(s) and last linear layer (LoRA's ``ffn_in`` / ``ffn_out`` roles; empty for a mixture of
    experts, whose experts are not linear layers).
    """

    input: str
    output: str
    first: tuple[str, ...]
    last: str
    marker: str = ""  # a child that must exist for a generic layout to apply (a mixture's experts)


@dataclass(frozen=True)
class FusedQKV:
    """One linear layer computing queries, keys and values together, and how its outputs are laid out.

    ``layout``: ``"grouped"`` is [all queries | all keys | all values] (Phi-3's ``qkv_proj``, with
    grouped-query sizes H·p, KV·p, KV·p; ModernBERT's ``Wqkv``); ``"per_group"`` is, for each of the
    KV key/value heads, [its H/KV query heads | its key head | its value head] (GPT-NeoX's and
    Bloom's ``query_key_value`` with KV = H: per head [q | k | v]; GPT-BigCode's multi-query
    ``c_attn`` and Falcon's with KV = 1: [q | k | v]).
    """

    path: str
    layout: str


def _roles(q: str, k: str, v: str) -> dict[str, tuple[str, ...]]:
    return {"q": (q,), "k": (k,), "v": (v,)}


@dataclass(frozen=True)
class Family:
    """Everything inducer needs to know about one model family, as data.

    Attributes:
        name: the family, for messages.
        attention_classes: class names of the modules transformers passes to its attention function.
        output_projection: paths of the attention's output projection relative to that module
            ("../" climbs to the parent), tried in order.
        roles: linear layers by role ("q", "k", "v"), relative to the attention module, each a tuple
            of paths tried in order; "name[i/n]" is the i-th of n equal output slices of a fused
            projection (GPT-2's c_attn holds q, k and v side by side). None: the generic record's.
        cross_roles: the roles in a cross-attention module, where they differ (GPT-2 keeps its
            query projection apart from a fused key/value projection); None: ``roles``.
        cross_attention_classes: attention classes that are always cross-attention.
        layer_classes: class names of the modules holding a feed-forward block.
        feed_forward: where that block starts and ends (None: the family has none inducer knows).
        fused_qkv: the fused query/key/value projection and its layout (roles "q", "k", "v" are
            then slices of it, found from the module's head geometry).
        seam: for attention that does not call transformers' registry, the name of the seam in
            :data:`inducer.runtime.seams.SEAMS` through which inducer's attention function reaches it.
        kv_expanded_when: a module attribute that, when true, means keys and values reach attention
            already repeated for every query head (Falcon's ``new_decoder_architecture``), so
            added keys (prefixes) need one head per query head. A fact of the seam: it counts only
            where the module runs through it.
        seam_tested_on: the transformers versions the seam was tested on (messages and
            docs/model_support.md); the seam checks itself at attach on any version.
    """

    name: str
    attention_classes: tuple[str, ...] = ()
    output_projection: tuple[str, ...] = ()
    roles: dict[str, tuple[str, ...]] | None = None
    cross_roles: dict[str, tuple[str, ...]] | None = None
    cross_attention_classes: tuple[str, ...] = ()
    layer_classes: tuple[str, ...] = ()
    feed_forward: FeedForwardFacts | None = None
    fused_qkv: FusedQKV | None = None
    seam: str | None = None
    kv_expanded_when: str | None = None
    seam_tested_on: str | None = None


# Falcon's attention is inline: the seam catches its own sdpa call; its new decoder architecture
# hands attention keys and values already repeated for every query head.
# From transformers 5.25 Falcon calls the registry itself and the seam retires
# (inducer.runtime.seams.seam_for).
# seam_tested_on: docs/compatibility.md (make test-versions).
_FALCON_SEAM = dict(seam="sdpa-call", kv_expanded_when="new_decoder_architecture",
                    seam_tested_on="5.15.1-5.24.0")
_BERT_FFN = FeedForwardFacts("intermediate", "output.dense", ("intermediate.dense",), "output.dense")
_GATED_FFN = FeedForwardFacts("mlp", "mlp", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")

# The tested families. Other modules that call the attention registry are tried with GENERIC.
FAMILIES: tuple[Family, ...] = tuple(
    Family(name, (f"{name}SelfAttention", f"{name}CrossAttention"), ("../output.dense",),
           _roles("query", "key", "value"), None, (f"{name}CrossAttention",), (f"{name}Layer",), _BERT_FFN)
    for name in ("Bert", "Roberta")
) + (
    Family("GPT2", ("GPT2Attention",), ("c_proj",), _roles("c_attn[0/3]", "c_attn[1/3]", "c_attn[2/3]"),
           _roles("q_attn", "c_attn[0/2]", "c_attn[1/2]"), (), ("GPT2Block",),
           FeedForwardFacts("mlp", "mlp", ("mlp.c_fc",), "mlp.c_proj")),
) + tuple(
    Family(name, (f"{name}Attention",), ("o_proj",), layer_classes=(f"{name}DecoderLayer",),
           feed_forward=_GATED_FFN)
    for name in ("Llama", "Mistral", "Qwen2", "Qwen3")
) + tuple(
    Family(name, (f"{name}Attention",), ("out_proj",),
           layer_classes=(f"{name}EncoderLayer", f"{name}DecoderLayer"),
           feed_forward=FeedForwardFacts("fc1", "fc2", ("fc1",), "fc2"))
    for name in ("Bart", "MBart")
) + (
    Family("T5", ("T5Attention",), ("o",), _roles("q", "k", "v"), layer_classes=("T5LayerFF",),
           feed_forward=FeedForwardFacts("DenseReluDense", "DenseReluDense",
                                         ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1"),
                                         "DenseReluDense.wo")),
    # Families whose attention differs from the generic names (tried by the sweep, tests/sweep).
    Family("DistilBert", ("DistilBertSelfAttention",), ("out_lin",), _roles("q_lin", "k_lin", "v_lin")),
    Family("ModernBert", ("ModernBertAttention",), ("Wo",), fused_qkv=FusedQKV("Wqkv", "grouped")),
    Family("DebertaV2", ("DisentangledSelfAttention",), ("../output.dense",),
           _roles("query_proj", "key_proj", "value_proj")),
    # Inline attention reached through a seam (inducer.runtime.seams).
    Family("GPTNeo", ("GPTNeoSelfAttention",), ("out_proj",), _roles("q_proj", "k_proj", "v_proj"),
           seam="gpt-neo-attn", seam_tested_on="5.15.1-5.25.0"),
    Family("MPNet", ("MPNetSelfAttention",), ("o",), _roles("q", "k", "v"), seam="projections-forward",
           seam_tested_on="5.15.1-5.25.0"),
    Family("Phi3", ("Phi3Attention",), ("o_proj",), fused_qkv=FusedQKV("qkv_proj", "grouped")),
) + tuple(
    Family(name, (f"{name}Attention",), ("dense",), fused_qkv=FusedQKV("query_key_value", "per_group"),
           **(_FALCON_SEAM if name == "Falcon" else {}))
    for name in ("GPTNeoX", "Bloom", "Falcon")
) + (
    Family("GPTBigCode", ("GPTBigCodeAttention",), ("c_proj",), fused_qkv=FusedQKV("c_attn", "per_group")),
)

# Feed-forward layouts tried, in order, on a transformer layer (a module named *Layer* or *Block*)
# of no known family: the first whose linear layers all exist applies. Outputs are the last linear
# layer where the block's own module also adds dropout or the residual (Bloom's MLP does).
FEED_FORWARD_LAYOUTS: tuple[FeedForwardFacts, ...] = (
    _BERT_FFN,  # XLM-R, ELECTRA, CamemBERT, Data2Vec, RoFormer, MPNet, DeBERTa-v2
    _GATED_FFN,  # Gemma, OLMo, Cohere, Granite, SmolLM3, StableLM, ...
    FeedForwardFacts("mlp", "mlp.c_proj", ("mlp.c_fc",), "mlp.c_proj"),  # GPT-Neo, BigCode, Starcoder2
    FeedForwardFacts("mlp", "mlp.fc_out", ("mlp.fc_in",), "mlp.fc_out"),  # GPT-J
    FeedForwardFacts("mlp", "mlp.fc2", ("mlp.fc1",), "mlp.fc2"),  # Phi
    # GPT-NeoX, Bloom, Falcon
    FeedForwardFacts("mlp", "mlp.dense_4h_to_h", ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
    FeedForwardFacts("mlp", "mlp.down_proj", ("mlp.gate_up_proj",), "mlp.down_proj"),  # Phi-3 (fused gate/up)
    FeedForwardFacts("mlp", "mlp.Wo", ("mlp.Wi",), "mlp.Wo"),  # ModernBERT (fused GLU input)
    FeedForwardFacts("fc1", "fc2", ("fc1",), "fc2"),  # BART-style: Pegasus, Marian, Blenderbot, OPT, BioGPT
    FeedForwardFacts("ffn", "ffn.lin2", ("ffn.lin1",), "ffn.lin2"),  # DistilBERT
    FeedForwardFacts("ffn", "ffn_output", ("ffn",), "ffn_output"),  # ALBERT
    FeedForwardFacts("DenseReluDense", "DenseReluDense",
                     ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1"),
                     "DenseReluDense.wo"),  # mT5, LongT5
    FeedForwardFacts("mlp", "mlp", (), "", marker="mlp.experts"),  # Mixtral, Qwen2-MoE, gpt-oss
)

# What is tried for an attention module of no known family: projections used when the path
# resolves to a linear layer of the right width, roles by the common names.
GENERIC = Family(
    "generic",
    output_projection=("o_proj", "out_proj", "c_proj", "o", "dense", "out_lin", "Wo", "../output.dense"),
    roles={"q": ("q_proj", "query", "q"), "k": ("k_proj", "key", "k"), "v": ("v_proj", "value", "v")},
)
# Facts every family shares: the module names of cross-attention, the head-geometry attributes.
CROSS_ATTENTION_NAMES = {"encoder_attn", "EncDecAttention", "crossattention", "cross_attn"}
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
KV_HEAD_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads", "kv_heads")
SUPPORTED = ("BERT, RoBERTa, GPT-2, Llama/Mistral/Qwen, BART/mBART, T5, EncoderDecoderModel; every "
             "architecture tried is in docs/model_support.md")
