"""inducer.peft where transformers and TRL reach PEFT: add_adapter / load_adapter / set_adapter /
disable_adapters / delete_adapter, SFTTrainer(peft_config=...), gradient checkpointing and bf16."""

from __future__ import annotations

import pytest
import torch
import transformers

import inducer
from inducer.peft import InducerPeftConfig

from ..conftest import make_model
from ..tiny import make_model as make_word_model
from ..tiny import make_tokenizer
from .common import perturb, saved_base

peft = pytest.importorskip("peft")
IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])


def _transformers_gate() -> str | None:
    """Why transformers' add_adapter / set_adapter / ... refuse every PEFT method here (None: they don't)."""
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations.peft import MIN_PEFT_VERSION

    if Version(version("peft")) < Version(MIN_PEFT_VERSION):
        return f"transformers {transformers.__version__} needs peft>={MIN_PEFT_VERSION} for add_adapter & co"
    return None


def test_transformers_adapter_methods_refuse_every_peft_method_alike_below_their_peft_minimum():
    if _transformers_gate() is None:
        pytest.skip("the installed peft meets transformers' minimum")
    for config in (peft.LoraConfig(target_modules=["q_proj"]), InducerPeftConfig()):
        with pytest.raises(ValueError, match="version of PEFT you are using is not compatible"):
            make_model("llama").add_adapter(config, adapter_name="one")


def _check_switching(model, add, set_adapter, disable, enable, delete, active):
    with torch.no_grad():
        base = model(input_ids=IDS).logits
    add(InducerPeftConfig(r_k=2, r_v=4, init="lora"), "one")
    add(InducerPeftConfig(r_k=1, r_v=3, init="lora"), "two")
    set_adapter("two")
    perturb(model, seed=4)  # only the active adapter's tensors are trainable: "two" moves
    with torch.no_grad():
        two = model(input_ids=IDS).logits
        set_adapter("one")
        assert active() == ["one"]
        one = model(input_ids=IDS).logits
        disable()
        assert torch.equal(model(input_ids=IDS).logits, base)
        enable()
        assert torch.equal(model(input_ids=IDS).logits, one)  # "one" is still at its init: E = 0
        assert torch.equal(one, base) and not torch.equal(two, base)
        set_adapter("two")
        delete("one")
        assert list(model.peft_config) == ["two"] and active() == ["two"]
        assert torch.equal(model(input_ids=IDS).logits, two)


def test_transformers_add_set_disable_delete_adapter():
    if (reason := _transformers_gate()) is not None:
        pytest.skip(reason)
    model = make_model("llama")
    _check_switching(model, lambda c, n: model.add_adapter(c, adapter_name=n), model.set_adapter,
                     model.disable_adapters, model.enable_adapters, model.delete_adapter,
                     model.active_adapters)


def test_the_peft_calls_transformers_makes_add_set_disable_delete():
    """What transformers' add_adapter / set_adapter / disable_adapters / enable_adapters / delete_adapter
    do (transformers.integrations.peft), step by step with the real PEFT functions they call."""
    from peft.functional import delete_adapter, inject_adapter_in_model, set_adapter
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = make_model("llama")

    def add(config, name):
        inject_adapter_in_model(config, model, name)
        model.peft_config = {**getattr(model, "peft_config", {}), name: config}

    def toggle(enabled):
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)

    def delete(name):
        delete_adapter(model, adapter_name=name, prefix=f"{model.peft_config[name].peft_type.value.lower()}_")
        model.peft_config.pop(name)

    def active():
        return next(m for m in model.modules() if isinstance(m, BaseTunerLayer)).active_adapter

    _check_switching(model, add, lambda n: set_adapter(model, n), lambda: toggle(False), lambda: toggle(True),
                     delete, active)


def test_transformers_load_adapter_reads_the_peft_layout(tmp_path):
    base = saved_base("gpt2", tmp_path / "base")
    model = peft.get_peft_model(base, InducerPeftConfig(r_k=2, r_v=4, task_type="CAUSAL_LM"))
    perturb(model, seed=9).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path / "adapter")
    fresh = saved_base("gpt2", tmp_path / "base2")
    fresh.load_adapter(str(tmp_path / "adapter"), adapter_name="mine")
    assert inducer.adapters(fresh) == ["mine"] and not fresh.training
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=IDS).logits, expected)
    # and its state dict, as transformers would save it, is PEFT's file again
    from peft.functional import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    again = get_peft_model_state_dict(fresh, adapter_name="mine")
    assert {"base_model.model." + k: v for k, v in again.items()} .keys() == saved.keys()
    assert all(torch.equal(again[k.removeprefix("base_model.model.")], v) for k, v in saved.items())


def test_sft_trainer_with_peft_config_trains_saves_and_reloads(tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import GPT2LMHeadModel

    tokenizer = make_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    make_word_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "base")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    texts = ["the food is good and cheap", "a pub near the river", "the price is high"] * 4
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], use_cpu=True, save_steps=2, logging_steps=1)
    assert args.bf16 and args.gradient_checkpointing  # TRL's defaults
    config = InducerPeftConfig.from_preset("inducer+lora", r_k=2, r_v=4, r=2, task_type="CAUSAL_LM")
    trainer = trl.SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=config,
                             train_dataset=datasets.Dataset.from_dict({"text": texts}))
    assert isinstance(trainer.model, peft.PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(".inducer_modules.default." in n for n in before)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    assert any(not torch.equal(before[n], p) for n, p in trained.named_parameters() if n in before)
    assert all(p.dtype == torch.float32 for n, p in trained.named_parameters() if n in before)
    trainer.save_model(tmp_path / "final")
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    ids = tokenizer("the food is good", return_tensors="pt")["input_ids"]
    reloaded = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits)


def test_gradient_checkpointing_and_bf16_behave_as_with_attach():
    fields = dict(r_k=2, r_v=4, init="lora")
    ours = perturb(inducer.attach(make_model("llama").to(torch.bfloat16), inducer.InducerConfig(**fields),
                                  train_head=False), seed=2)
    theirs = peft.get_peft_model(make_model("llama").to(torch.bfloat16), InducerPeftConfig(**fields))
    perturb(theirs, seed=2)
    assert all(p.dtype == torch.float32 for p in theirs.parameters() if p.requires_grad)  # as attach does
    for model in (ours, theirs):
        model.train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grads = []
    for model in (ours, theirs):
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append(sorted(p.grad.float().norm().item() for p in model.parameters() if p.requires_grad))
    assert grads[0] == grads[1] and all(g > 0 for g in grads[0])
