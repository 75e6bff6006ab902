"""lm-evaluation-harness on an inducer adapter, offline: a local YAML task over a JSONL file, a tiny
model; the ``inducer`` model type, ``hf``'s ``peft=``, the Python call and the command line all give
the score of our own evaluation of the same examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ..tiny import make_model, make_tokenizer
from .common import perturb

lm_eval = pytest.importorskip("lm_eval")
peft = pytest.importorskip("peft")

ROWS = [("the food is", ["good", "high", "river"], 0), ("a pub near the", ["river", "food", "price"], 0),
        ("the price is", ["cheap", "high", "pub"], 1),
        ("the food is good and", ["cheap", "river", "near"], 0),
        ("a pub near", ["the", "is", "good"], 0), ("the price is high and", ["the", "cheap", "food"], 2)]


def _task(folder):
    folder.mkdir()
    with open(folder / "data.jsonl", "w") as f:
        for question, choices, answer in ROWS:
            f.write(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n")
    (folder / "tiny_mc.yaml").write_text(
        "task: inducer_tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'data.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")


def _our_accuracy(model, tokenizer) -> tuple[float, list[list[float]]]:
    """Accuracy by the summed log-probability of ' ' + choice after the question (lm-eval's rule)."""
    lls, correct = [], 0
    with torch.no_grad():
        for question, choices, answer in ROWS:
            context = tokenizer(question)["input_ids"]
            scores = []
            for choice in choices:
                ids = tokenizer(question + " " + choice)["input_ids"]
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                scores.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
            lls.append(scores)
            correct += int(max(range(len(scores)), key=scores.__getitem__) == answer)
    return correct / len(ROWS), lls


def test_lm_eval_scores_equal_our_evaluation(tmp_path):
    from inducer.integrations.lm_eval import evaluate
    from inducer.peft import InducerPeftConfig

    tokenizer = make_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    make_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    from transformers import GPT2LMHeadModel

    model = peft.get_peft_model(GPT2LMHeadModel.from_pretrained(tmp_path / "base"),
                                InducerPeftConfig(r_k=2, r_v=4, task_type="CAUSAL_LM"))
    perturb(model, seed=6, scale=0.5).eval()
    model.save_pretrained(tmp_path / "adapter")
    _task(tmp_path / "tasks")
    accuracy, lls = _our_accuracy(model, tokenizer)

    def score(results) -> float:
        return results["results"]["inducer_tiny_mc"]["acc,none"]

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    registered = simple_evaluate(model="inducer", model_args=f"pretrained={tmp_path / 'base'},adapter="
                                 f"{tmp_path / 'adapter'},device=cpu", tasks=["inducer_tiny_mc"],
                                 task_manager=manager, log_samples=True)
    via_hf = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'base'},"
                             f"peft={tmp_path / 'adapter'},device=cpu", tasks=["inducer_tiny_mc"],
                             task_manager=manager)
    python_call = evaluate(model, tokenizer, ["inducer_tiny_mc"], include_path=str(tmp_path / "tasks"))
    assert score(registered) == score(via_hf) == score(python_call) == accuracy
    samples = sorted(registered["samples"]["inducer_tiny_mc"], key=lambda s: s["doc_id"])
    theirs = [[resp[0][0] for resp in s["resps"]] for s in samples]
    torch.testing.assert_close(torch.tensor(theirs), torch.tensor(lls), rtol=1e-5, atol=1e-5)
    # the command line, in a fresh process (lm-eval has no plugin discovery: inducer's runner registers)
    cli = subprocess.run([sys.executable, "-m", "inducer.integrations.lm_eval", "--model", "inducer",
                          "--model_args",
                          f"pretrained={tmp_path / 'base'},adapter={tmp_path / 'adapter'}", "--device", "cpu",
                          "--tasks", "inducer_tiny_mc", "--include_path", str(tmp_path / "tasks"),
                          "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert cli.returncode == 0, cli.stderr[-3000:]
    written = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results*.json")]
    assert [r["results"]["inducer_tiny_mc"]["acc,none"] for r in written] == [accuracy]
