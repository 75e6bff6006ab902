"""transformers' Trainer with an adapted model: save_model, checkpoints, resume, load_best_model_at_end."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

import inducer
from inducer.integrations import has_adapter, inducer_trainer

from .common import lm_rows, logits_in_fresh_process, saved_base

IDS = torch.tensor([[5, 9, 13, 7, 21, 30]])


def _args(out, **extra) -> TrainingArguments:
    options = dict(output_dir=str(out), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4,
                   logging_steps=1, save_steps=2, report_to=[], use_cpu=True, seed=0, data_seed=0,
                   dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**{**options, **extra})


def _trainer(tmp_path, base_dir, trainer_class=None, **extra):
    model = inducer.attach(saved_base("gpt2", base_dir), [inducer.InducerConfig(), inducer.LoRAConfig(r=2)])
    cls = trainer_class or inducer.InducerTrainer
    return cls(model=model, args=_args(tmp_path / "run", **extra), train_dataset=lm_rows(),
               eval_dataset=lm_rows(4, seed=1))


def _adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_trainer_save_model_writes_the_adapter_and_a_fresh_process_reloads_it(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "base", trainer_class=Trainer)  # the plain Trainer saves right
    trainer.train()
    trainer.save_model(tmp_path / "final")
    assert has_adapter(tmp_path / "final") and not (tmp_path / "final" / "model.safetensors").exists()
    assert has_adapter(tmp_path / "run" / "checkpoint-2")
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    got = logits_in_fresh_process(tmp_path / "final", IDS, tmp_path / "logits.pt")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_resuming_from_a_checkpoint_restores_adapter_and_optimizer(tmp_path):
    straight = _trainer(tmp_path / "a", tmp_path / "base")
    straight.train()
    expected = _adapter(straight.model)
    # A new trainer on a fresh model, resumed from the straight run's mid-way checkpoint.
    resumed = _trainer(tmp_path / "b", tmp_path / "base2")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "run" / "checkpoint-2"))
    got = _adapter(resumed.model)
    assert got.keys() == expected.keys()
    for name in expected:  # equal only if the adapter AND the optimizer's moments were restored
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_plain_trainer_cannot_resume_and_says_so(tmp_path):
    first = _trainer(tmp_path, tmp_path / "base", trainer_class=Trainer, max_steps=2)
    first.train()
    again = _trainer(tmp_path, tmp_path / "base2", trainer_class=Trainer)
    with pytest.raises(ValueError, match="valid checkpoint"):
        again.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_load_best_model_at_end_loads_the_best_adapter(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "base", eval_strategy="steps", eval_steps=2,
                       load_best_model_at_end=True, metric_for_best_model="loss", save_total_limit=None)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and has_adapter(best)
    reference = inducer.from_pretrained(best)
    for name, p in _adapter(trainer.model).items():
        torch.testing.assert_close(p, dict(reference.named_parameters())[name], rtol=0, atol=0)


def test_inducer_trainer_refuses_a_non_trainer_class():
    with pytest.raises(TypeError, match="not a transformers.Trainer subclass"):
        inducer_trainer(dict)


def test_bf16_mixed_precision_training_of_a_llama_with_inducers(tmp_path):
    # accelerate's bf16 autocast (Trainer bf16=True, `inducer train --precision bf16`) hands the fused
    # attention float32 rotary queries/keys and bf16 values: this crashed in the CPU kernel.
    model = inducer.attach(saved_base("llama", tmp_path / "base"), [inducer.InducerConfig()])
    trainer = inducer.InducerTrainer(model=model, args=_args(tmp_path / "run", bf16=True, max_steps=2),
                                     train_dataset=lm_rows())
    before = _adapter(model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in _adapter(model).items())
