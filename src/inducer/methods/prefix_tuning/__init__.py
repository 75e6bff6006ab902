"""Prefix-tuning (Li & Liang, ACL 2021), implemented inside attention.

Every chosen attention module gets ``length`` trainable key and value rows per key/value head. The
attention function (``inducer.runtime.attention``) prepends them to the keys and values it receives, i.e.
after the model's projections, rotary embedding and KV-cache update:

    Attn_i = softmax_j([scaling * Q_i . P_k ; scaling * Q_i . K_j + mask_ij]) @ [P_v ; V]

So the prefixes are never stored in the cache (cached decoding adds them again at every step),
every query sees every prefix position (the causal and padding masks apply to real keys only),
positions of real tokens are unchanged, and the method works for encoders, both stacks of
encoder-decoders (self- and cross-attention), grouped-query models (prefixes live on the key/value
heads), gradient checkpointing, and together with inducer-tuning (whose lambda then normalises over
the prefix keys too, which is the kernel view of spec section 1).

Parameters, for an adapted attention module at qualified name ``M`` (H_kv key/value heads, head dim p):

* flat (``reparam_hidden=None``): ``M.prefix.key`` and ``M.prefix.value``, each [H_kv, l, p].
* reparameterised (``reparam_hidden=h``, Li & Liang's training-time MLP): one shared encoder at the
  model root, ``prefix_encoder.embedding`` [l, d] -> ``prefix_encoder.hidden`` Linear(d, h) -> tanh,
  and per module ``M.prefix.output`` Linear(h, 2 * H_kv * p), whose output rows are laid out
  (key|value, head, channel). Li & Liang's single output layer of width ``layers * 2 * d`` is this
  one, block-partitioned by module: mathematically the same MLP.

Budget: ``count_parameters(model).added`` counts what is trained (the MLP when reparameterised). At
inference the MLP folds into flat prefixes, whose budget is ``l * 2 * H_kv * p`` per adapted module
(:func:`inference_parameters`). :func:`inducer.save_adapter` stores both forms, so
``inducer.load_adapter(base, dir)`` resumes training with the MLP and
``inducer.load_adapter(base, dir, inference=True)`` gives flat prefixes with identical outputs.
"""

from .method import CHILD_NAME, ENCODER_NAME, PrefixConfig
from .module import PrefixEncoder, PrefixModule, inference_parameters, key_value_heads, token_key_values
from .peft import PREFIX_CONVERSION  # its PEFT conversion, registered where it is defined

__all__ = ["CHILD_NAME", "ENCODER_NAME", "PREFIX_CONVERSION", "PrefixConfig", "PrefixEncoder", "PrefixModule",
           "inference_parameters", "key_value_heads", "token_key_values"]
