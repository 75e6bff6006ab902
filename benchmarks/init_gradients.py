"""Gradient norms of inducer-tuning's tensors at step 0 for each ``InducerConfig(init=...)``.

Issue 16's hypothesis about inducer's slow start: under the paper's init (every tensor N(0, 0.01))
the value path E = lam * tanh(Q A_v + a_v) B_v starts at a saddle where each factor's gradient is
proportional to the other, tiny, one; LoRA-style (A random, B = 0) gives B a full gradient at once.
This script measures it: one forward and backward of MiniLM x vader-movies (the first 32 training
sentences, inducer at the 0.5% preset, task head trained) per init, same seed, and the gradient
norm of each tensor kind summed over layers. Seconds on a CPU.

    python benchmarks/init_gradients.py --out benchmarks/results/quality_nlu_init_gradients.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lib.stamp import environment

INITS = ("paper", "lora", "lora-value", "lora-key")


def _preactivation_stats(model, store: dict) -> None:
    """From every inducer's ``record_preactivations`` read-out: per call, the query's rms and the
    value path's pre-tanh rms and fraction saturated (|x| > 2, where tanh' < 0.08)."""
    from inducer.methods.inducer_tuning import InducerModule

    for module in model.modules():
        if isinstance(module, InducerModule):
            for q, pre in module.record_preactivations or ():
                value = pre[..., pre.shape[-1] - module.config.r_v:]
                store.setdefault("query_rms", []).append(q.square().mean().sqrt().item())
                store.setdefault("value_pre_tanh_rms", []).append(value.square().mean().sqrt().item())
                store.setdefault("value_saturated", []).append((value.abs() > 2).float().mean().item())
            module.record_preactivations = None


def gradient_norms(init: str, model_name: str, budget: str, rows: int) -> dict[str, float]:
    """Norm per tensor kind (key_a, ..., value_b_bias; over all layers) and of the task head; and
    (averaged over layers) the query's rms and the value path's pre-tanh rms and saturated fraction."""
    import torch

    import inducer
    from inducer.data.base_models import load_model
    from inducer.data.tasks import load_task
    from inducer.sizing.presets import preset

    task = load_task("vader-movies")
    train = task.split("train")
    torch.manual_seed(0)
    loaded = load_model(model_name, "classification", 2)
    choice = preset("inducer", loaded.model, budget)
    inducer.attach(loaded.model, [dataclasses.replace(c, init=init) for c in choice], train_head=True)
    batch = loaded.tokenizer(list(train["text"][:rows]), padding=True, truncation=True, max_length=128,
                             return_tensors="pt")
    store: dict[str, list[float]] = {}
    from inducer.methods.inducer_tuning import InducerModule

    for module in loaded.model.modules():
        if isinstance(module, InducerModule):
            module.record_preactivations = []
    loaded.model(**batch, labels=torch.tensor(train["label"][:rows])).loss.backward()
    _preactivation_stats(loaded.model, store)
    squares: dict[str, float] = {}
    for name, parameter in loaded.model.named_parameters():
        if parameter.grad is None:
            continue
        kind = name.split(".")[-1] if ".inducer." in name else "head" if "classifier" in name else None
        if kind:
            squares[kind] = squares.get(kind, 0.0) + parameter.grad.square().sum().item()
    norms = {kind: value**0.5 for kind, value in squares.items()}
    return {**norms, **{f"mean_{k}": sum(v) / len(v) for k, v in store.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--budget", default="0.5%")
    parser.add_argument("--rows", type=int, default=32, help="training sentences in the one batch")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print only)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = {init: gradient_norms(init, args.model, args.budget, args.rows) for init in INITS}
    for init, norms in results.items():
        print(init, ", ".join(f"{k} {v:.2e}" for k, v in norms.items()))
    if args.out:
        report = {"environment": environment(), "model": args.model, "budget": args.budget,
                  "rows": args.rows, "gradient_norms": results}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
