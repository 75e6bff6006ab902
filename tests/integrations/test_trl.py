"""TRL's SFTTrainer with its defaults (bf16, gradient checkpointing) on a model adapted with attach."""

from __future__ import annotations

import pytest
import torch

import inducer
from inducer.integrations import has_adapter, inducer_trainer

from ..tiny import make_model, make_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def test_sft_trainer_defaults_train_save_and_reload(tmp_path):
    from transformers import GPT2LMHeadModel

    tokenizer = make_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    make_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "base")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    inducer.attach(model, [inducer.InducerConfig(), inducer.LoRAConfig(r=2)])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    texts = ["the food is good and cheap", "a pub near the river", "the price is high"] * 4
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], use_cpu=True, save_steps=2, logging_steps=1)
    assert args.bf16 and args.gradient_checkpointing  # TRL's defaults, the crash
    trainer = inducer_trainer(trl.SFTTrainer)(model=model, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_dict({"text": texts}))
    trainer.train()
    # accelerate wrapped forward in bf16 autocast for training; compare without it
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    assert any(not torch.equal(before[n], p) for n, p in trained.named_parameters() if n in before)
    assert all(p.dtype == torch.float32 for n, p in trained.named_parameters() if n in before)
    trainer.save_model(tmp_path / "final")
    assert has_adapter(tmp_path / "final") and has_adapter(tmp_path / "run" / "checkpoint-2")
    assert not (tmp_path / "final" / "model.safetensors").exists()
    ids = tokenizer("the food is good", return_tensors="pt")["input_ids"]
    reloaded = inducer.from_pretrained(tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits,
                                   rtol=0, atol=0)



def test_dpo_trainer_trains_an_attached_model_and_checkpoints_the_adapter(tmp_path):
    from transformers import GPT2LMHeadModel

    tokenizer = make_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    make_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "base")
    model = inducer.attach(GPT2LMHeadModel.from_pretrained(tmp_path / "base"),
                           [inducer.InducerConfig(init="lora"), inducer.LoRAConfig(r=2)])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rows = {"prompt": ["the food is", "a pub near"] * 4, "chosen": [" good", " the river"] * 4,
            "rejected": [" high", " cheap"] * 4}
    args = trl.DPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], use_cpu=True, save_steps=2, logging_steps=1)
    trainer = inducer_trainer(trl.DPOTrainer)(model=model, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_dict(rows))
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    assert has_adapter(tmp_path / "run" / "checkpoint-2")
    assert inducer.runtime.adapter.adapter_state(trainer.ref_model) is None  # the reference is the plain base
