"""``inducer demo``: the main job's settings (MiniLM x vader-movies, five methods at ~0.5%), as a
``RunSpec``, and the stamp of when, where and how long it ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..training.run_records import CompareResults
from .runspec import RunSpec, resolve


def auto_threads() -> int:
    """PyTorch threads for the cores that other processes leave free (at least one).

    Threads sharing a core with another busy process wait for each other at every parallel operation:
    on a 2-core machine running one other job, a MiniLM training step took 6.7 s with 2 threads and
    about 0.7 s with 1.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, round(cores - busy)))


DEMO_METHODS = ["full", "prefix", "lora", "inducer", "inducer+lora"]
# Learning rates for the demo, chosen once on vader-movies' validation split with these settings (one
# run each; validation accuracy): full 1e-4 (79.9); prefix 1e-4 / 3e-4 / 1e-3 / 3e-3 (53.5 / 57.0 / 49.2 /
# 49.2); LoRA 3e-3 (78.1); inducer 1e-3 / 3e-3 / 5e-3 / 1e-2 (54.8 / 72.7 / 49.2 / 49.2); inducer+LoRA
# 3e-3 / 1e-2 (76.7 / 49.2). `inducer compare` without --lr searches a grid per method itself.
# Issue 27's study (benchmarks/results/quality_demo_study.md, seed 0, validation every 10 steps) grew the
# grids past both edges for LoRA (1e-3 / 3e-3 / 1e-2: 77.8 / 79.4 / 64.6) and the LoRA-style-init inducer
# (71.0 / 78.9 / 60.1): 3e-3 is interior for both, so these rates stay.
DEMO_LRS = {"full": 1e-4, "prefix": 3e-4, "lora": 3e-3, "inducer": 3e-3, "inducer+lora": 3e-3}


def demo_spec(
    output: str,
    model: str = "minilm",
    task: str = "vader-movies",
    methods: str | list[str] | None = None,
    budget: str | int | None = "0.5%",
    train_examples: int = 2000,
    eval_examples: int = 1100,
    epochs: float = 1.0,
    max_length: int = 64,
    progress: bool = True,
) -> RunSpec:
    """The demo's RunSpec (``methods``: default ``DEMO_METHODS``): one seed, ``DEMO_LRS``, three
    validation points per run (the learning curves in results.png)."""
    steps = max(1, int(train_examples / 16 * epochs))
    training = dict(
        batch_size=16,
        eval_batch_size=128,
        epochs=epochs,
        max_length=max_length,
        weight_decay=0.01,
        warmup_ratio=0.06,
        eval_every=max(1, -(-steps // 3)),
        max_train_examples=train_examples,
        max_eval_examples=eval_examples,
        seed=42,
    )
    methods = methods or DEMO_METHODS
    methods = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else methods
    # Running the main job again replaces its own results (files of other kinds there are refused).
    cli_args = dict(model=model, task=task, methods=methods, budget=budget, output=output, progress=progress,
                    lrs={m: DEMO_LRS.get(m, 1e-3) for m in methods}, overwrite=True)  # fmt: skip
    return resolve(None, {**cli_args, "training": training}, "demo")


def stamp(output: Path, seconds: float) -> None:
    """Add when, where and how long a demo ran to its results (the README quotes them)."""
    import datetime
    import platform

    import torch
    import transformers

    machine = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    note = f"\nRun {when} on {machine}: {seconds:.0f} s wall time (loading, training and evaluation).\n"
    atomic_write_text(output / "results.md", (output / "results.md").read_text(encoding="utf-8") + note)
    results = CompareResults.read(output)
    results.environment = {"date": when, "machine": machine, "wall_seconds": seconds}
    atomic_write_text(output / "results.json", json.dumps(results.to_json(), indent=2, default=str))
