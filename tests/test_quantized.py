"""Quantized and offloaded bases: bitsandbytes 4-bit and 8-bit (CPU backend), torchao weight-only
int8, and accelerate's disk offload. Adapters are created in float32 on the module's execution
device; the base stays quantized (QLoRA); attach, a training step, save and load all work.

bitsandbytes' CPU 4-bit kernel needs every quantized layer's output size to be a multiple of 32
(``AssertionError: N must be divisible by block_n`` otherwise, in the base model's own forward), so
the model here is a tiny Llama of width 64.
"""

from __future__ import annotations

import pytest
import torch

import inducer

pytest.importorskip("accelerate")
IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])
CONFIGS = lambda: [inducer.LoRAConfig(r=2, targets=["q", "k", "v", "o"]), inducer.InducerConfig()]  # noqa: E731


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama64")
    LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(folder)
    return folder


def _quantization(kind: str):
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if kind == "bnb-4bit":
        pytest.importorskip("bitsandbytes")
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    if kind == "bnb-8bit":
        pytest.importorskip("bitsandbytes")
        return BitsAndBytesConfig(load_in_8bit=True)
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _load(folder, kind):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, quantization_config=_quantization(kind), device_map="cpu")


QUANTIZED_WEIGHT = {"bnb-4bit": "Linear4bit", "bnb-8bit": "Linear8bitLt", "torchao-int8": "Int8Tensor"}


@pytest.mark.parametrize("kind", sorted(QUANTIZED_WEIGHT))
def test_attach_train_save_load_on_a_quantized_base(llama_folder, kind, tmp_path):
    model = inducer.attach(_load(llama_folder, kind), CONFIGS())
    q_proj = model.model.layers[0].self_attn.q_proj
    assert QUANTIZED_WEIGHT[kind] in (type(q_proj).__name__, type(q_proj.weight).__name__)
    quantized_before = q_proj.weight.detach().clone() if kind != "torchao-int8" else None
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in trainable.values())
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    for _ in range(2):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[n], p) for n, p in trainable.items() if n.endswith("lora.b"))
    if quantized_before is not None:  # the base stays quantized and untouched (QLoRA)
        assert torch.equal(q_proj.weight, quantized_before)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    inducer.save_adapter(model, tmp_path / "adapter")
    loaded = inducer.load_adapter(_load(llama_folder, kind).eval(), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_merge_and_unload_refuses_a_quantized_layer(llama_folder):
    model = inducer.attach(_load(llama_folder, "bnb-8bit"), [inducer.LoRAConfig(r=2)])
    with pytest.raises(ValueError, match="is quantized.*unquantized"):
        inducer.merge_and_unload(model)
    assert inducer.runtime.adapter.adapter_state(model) is not None


def test_a_layer_offloaded_to_disk_gets_its_adapters_on_the_execution_device(llama_folder, tmp_path):
    from transformers import LlamaForCausalLM

    reference = inducer.attach(LlamaForCausalLM.from_pretrained(llama_folder).eval(), CONFIGS())
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = LlamaForCausalLM.from_pretrained(llama_folder, device_map=device_map,
                                             offload_folder=tmp_path / "offload").eval()
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # on disk between forwards
    inducer.attach(model, CONFIGS())
    added = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.device.type == "cpu" for p in added.values())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.requires_grad:
                added[name].copy_(p)
        for _ in range(2):  # the offload hooks move weights in and out; the adapters stay
            torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits)
    inducer.save_adapter(model, tmp_path / "adapter")
    assert inducer.load_adapter(LlamaForCausalLM.from_pretrained(llama_folder), tmp_path / "adapter")


def test_a_4bit_adapter_loads_on_the_unquantized_base(llama_folder, tmp_path):
    from transformers import LlamaForCausalLM

    model = inducer.attach(_load(llama_folder, "bnb-4bit"), [inducer.LoRAConfig(r=2)])
    model(input_ids=IDS)  # the CPU kernel repacks the 4-bit weights on first use
    inducer.save_adapter(model, tmp_path / "adapter")
    full = inducer.load_adapter(LlamaForCausalLM.from_pretrained(llama_folder), tmp_path / "adapter")
    assert inducer.count_parameters(full).added == inducer.count_parameters(model).added


METHODS = {
    "inducer": lambda: [inducer.InducerConfig()],
    "lora": lambda: [inducer.LoRAConfig(r=2, targets=["q", "v", "ffn_in", "ffn_out"])],
    "prefix": lambda: [inducer.PrefixConfig(length=3)],
    "adapter": lambda: [inducer.AdapterConfig()],
    "kernel-mix": lambda: [inducer.KernelMixConfig(r=2)],
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", sorted(QUANTIZED_WEIGHT))
def test_every_method_trains_a_step_on_a_quantized_base(llama_folder, kind, method):
    model = inducer.attach(_load(llama_folder, kind), METHODS[method]()).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = [p.grad for p in trainable]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
