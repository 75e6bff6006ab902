"""``inducer compare`` and ``inducer demo``: several methods on one model and task, side by side.

For each method: the learning rate is the one given (``--lr``, the recipe, or ``lrs``), or is picked
on the validation split from a small grid (one training run per grid value, first seed); then one run
per seed, each selected on validation and scored on the test split(s). The results are written as
``results.json`` (everything, learning curves included), ``results.md`` (the table) and
``results.png`` (test metric with error bars, and validation learning curves). Each method's budget
is searched once; every learning-rate trial and seed reuses the sizes found.

Entry point: :func:`compare` with a :class:`inducer.app.runspec.RunSpec` (``inducer compare`` and
``inducer demo`` build theirs with :func:`inducer.app.runspec.resolve`); it returns, and writes, a
:class:`inducer.training.run_records.CompareResults`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.metrics import better
from ..data.task_source import TaskSource
from ..data.tasks import TaskData
from ..errors import UsageError
from ..io.atomic import TEMPORARY_SUFFIX, atomic_write, atomic_write_text
from ..sizing.presets import check_method
from ..training.config import TrainConfig
from ..training.run_folder import LOCK_FILE, RunFolderError, folder_lock
from ..training.run_records import CompareResults, ResultRow, RunResult, markdown_table
from .experiment import is_main_process, run_one

if TYPE_CHECKING:
    from .runspec import RunSpec

logger = logging.getLogger(__name__)
# Small per-method grids: full fine-tuning wants far smaller steps than the small added modules.
LR_GRIDS = {"full": (2e-5, 5e-5, 1e-4), "prefix": (1e-4, 3e-4, 1e-3), "bitfit": (5e-4, 1e-3, 3e-3)}
DEFAULT_GRID = (3e-4, 1e-3, 3e-3)
# When the best value sits at an edge of the grid, the grid grows that way (same ratio as its last
# step) until the best is interior, at most this many values per direction: a score that keeps
# improving towards ever smaller (or larger) rates would otherwise never stop.
MAX_GRID_EXTENSIONS = 3


def next_lr(scores: dict[float, float], grid: Sequence[float], metric: str,
            max_extensions: int = MAX_GRID_EXTENSIONS) -> float | None:
    """The learning rate to try next when the best of ``scores`` (lr -> validation score, every
    value tried so far) is at an edge of them; None when the best is interior, or when the grid
    already grew ``max_extensions`` values beyond ``grid`` in that direction.

    The new value continues the geometric step at that edge (3e-4 after 1e-3, 3e-3 goes to 9e-5),
    rounded to one significant digit. A best value tied with its neighbour does not count as at
    the edge (the neighbour is as good, and no direction is indicated)."""
    tried = sorted(scores)
    if len(tried) < 2:
        return None
    best = tried[0]
    for lr in tried[1:]:
        if better(metric, scores[lr], scores[best]):
            best = lr
    for edge, neighbour, beyond in ((tried[0], tried[1], min(grid)), (tried[-1], tried[-2], max(grid))):
        if best != edge or not better(metric, scores[edge], scores[neighbour]):
            continue
        grown = sum(1 for lr in tried if (lr < beyond if edge == tried[0] else lr > beyond))
        if grown >= max_extensions:
            return None
        value = edge * edge / neighbour
        rounded = float(f"{value:.0e}")
        return value if rounded in scores else rounded
    return None


def pick_lr(
    model: str,
    source: TaskSource,
    task: TaskData,
    method: str,
    config: TrainConfig,
    budget,
    grid: tuple[float, ...],
    output_dir: Path | None,
    progress: bool,
    sizes: dict | None = None,
    chosen: dict | None = None,
    overwrite: bool = False,
) -> tuple[float, list[dict]]:
    """The grid value with the best validation score (first seed), and every trial's score.

    The grid grows past an edge holding the best value (:func:`next_lr`); trials added so have
    ``"extension": True``. ``chosen``: the sizes already chosen per method (see
    :func:`inducer.app.experiment.build`); ``overwrite``: replace earlier runs in ``output_dir``."""
    trials = []
    scores: dict[float, float] = {}
    todo = list(grid)
    while todo:
        lr = todo.pop(0)
        run = run_one(
            model,
            source,
            method,
            replace(config, lr=lr),
            budget,
            output_dir / f"lr-{lr:g}" if output_dir else None,
            progress=progress,
            task=task,
            test_splits=False,
            sizes=sizes,
            chosen=chosen,
            overwrite=overwrite,
        )
        metric = run.select_metric
        trial = {"lr": lr, "validation": run.best_validation, "select_metric": metric}
        trials.append(trial if lr in grid else {**trial, "extension": True})
        logger.info("%s lr %g: validation %s %.4f", method, lr, metric, run.best_validation)
        scores[lr] = run.best_validation
        if not todo:
            extra = next_lr(scores, grid, metric)
            if extra is not None:
                logger.info("%s: best lr %g at the grid's edge, trying %g", method, choose_lr(trials), extra)
                todo.append(extra)
    return choose_lr(trials), trials


def choose_lr(trials: Sequence[dict]) -> float:
    """The learning rate of the best of ``trials`` already run: rows with ``lr``, ``validation`` (the
    best validation value of the run) and ``select_metric`` (which says whether higher is better), as
    :func:`pick_lr` returns them or a results file's ``lr_trials`` holds them; ties: the first."""
    if not trials:
        raise UsageError("choose_lr: no trials to choose from; run at least one learning rate")
    best = None
    for trial in trials:
        if best is None or better(trial["select_metric"], trial["validation"], best["validation"]):
            best = trial
    return best["lr"]


def plot(rows: list[ResultRow], runs: dict[str, list[RunResult]], path: Path, title: str) -> Path | None:
    """Bars of the test metric (mean ± std over seeds) and validation learning curves, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("results.png skipped: pip install matplotlib")
        return None
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.method for r in rows]
    means = [r.mean or 0.0 for r in rows]
    stds = [r.std or 0.0 for r in rows]
    bars.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    low = min(means) if means else 0.0
    bars.set_ylim(max(0.0, low - 10), max(means + [1.0]) + max(stds + [0.0]) + 2)
    bars.set_ylabel(f"test {rows[0].metric}" if rows else "")
    bars.set_title(title)
    for i, value in enumerate(means):
        bars.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    bars.tick_params(axis="x", rotation=20)
    for method, method_runs in runs.items():
        history = method_runs[0].history
        select = method_runs[0].select_metric
        curves.plot([h["step"] for h in history], [h[select] for h in history], marker="o", label=method)
        curves.set_ylabel(f"validation {select}")
    curves.set_xlabel("optimizer step")
    curves.set_title("learning curves (first seed)")
    curves.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def compare(
    spec: RunSpec,
    on_row: Callable[[list[ResultRow]], None] | None = None,
    task: TaskData | None = None,
) -> CompareResults:
    """Train and evaluate each of ``spec.methods`` over ``spec.seeds``; write the results to
    ``spec.output`` (results.json / .md / .png) if set, and return them.

    A method's learning rate is ``spec.lrs[method]`` if fixed, else the best on validation of its grid
    (``spec.lr_grids``, else ``LR_GRIDS``; first seed). Its training options are
    ``spec.config_for(method)``, its sizes ``spec.sizes_for(method)`` or the ones the budget search
    picks, once per method. ``on_row`` is called with the rows so far after each method (to print
    the table as it goes); ``task`` is ``spec.source``'s data if already loaded.
    """
    for method in spec.methods:
        if method not in spec.explicit_configs:
            check_method(method)
    task = task or spec.source.load()
    output = Path(spec.output) if spec.output else None
    # One comparison per results folder at a time (its runs' folders are locked by run_one too).
    with folder_lock(output) if output and is_main_process() else contextlib.nullcontext():
        if output and is_main_process():
            _check_results_folder(output, spec)
        return _compare(spec, on_row, task, output)


RESULT_FILES = ("results.json", "results.md", "results.png")


def _check_results_folder(output: Path, spec: RunSpec) -> None:
    """Refuse a results folder holding an earlier comparison unless ``spec.overwrite`` (one run owns
    its folder); with it, only files a comparison writes may be there (nothing else is touched)."""
    if not output.is_dir():
        return
    entries = sorted(p.name for p in output.iterdir() if p.name != LOCK_FILE)
    if entries and not spec.overwrite:
        raise RunFolderError(
            f"{output} already holds files ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); "
            "replace that comparison with --overwrite, or choose another --output")
    ours = set(RESULT_FILES) | set(spec.methods)
    foreign = [name for name in entries if name not in ours and not name.endswith(TEMPORARY_SUFFIX)]
    if foreign:
        raise RunFolderError(
            f"--overwrite: {output} holds files a comparison does not write ({', '.join(foreign[:4])}); "
            "nothing was removed: move them away or choose another --output")


def _compare(spec: RunSpec, on_row, task: TaskData, output: Path | None) -> CompareResults:
    """:func:`compare`'s work, with ``output`` (if any) locked."""
    seeds = spec.seeds
    results = CompareResults(spec.model, spec.source, spec.budget, list(seeds))
    rows, all_runs, lr_trials = results.rows, results.runs, results.lr_trials
    chosen: dict = dict(spec.explicit_configs)  # method -> its configs: the budget is searched once
    metric = task.spec.select
    for method in spec.methods:
        base = spec.config_for(method)
        sizes = spec.sizes_for(method)
        lr = spec.lrs.get(method)
        if lr is None:
            grid = spec.lr_grids.get(method) or LR_GRIDS.get(method, DEFAULT_GRID)
            lr, lr_trials[method] = pick_lr(
                spec.model,
                spec.source,
                task,
                method,
                replace(base, seed=seeds[0]),
                spec.budget_for(method),
                tuple(grid),
                output / method / "lr-search" if output and spec.save_runs else None,
                spec.progress,
                sizes,
                chosen,
                spec.overwrite,
            )
        runs = []
        for seed in seeds:
            run_dir = output / method / f"seed-{seed}" if output and spec.save_runs else None
            runs.append(
                run_one(
                    spec.model,
                    spec.source,
                    method,
                    replace(base, lr=lr, seed=seed),
                    spec.budget_for(method),
                    run_dir,
                    progress=spec.progress,
                    task=task,
                    sizes=sizes,
                    chosen=chosen,
                    overwrite=spec.overwrite,
                )
            )
        all_runs[method] = runs
        rows.append(ResultRow.from_runs(method, runs, lr, metric))
        if on_row is not None:
            on_row(rows)
        if output:
            _write(output, spec, task, results)
    return results


def _write(output: Path, spec: RunSpec, task: TaskData, results: CompareResults) -> None:
    header = spec.title or f"{spec.model} x {task.spec.name}"
    atomic_write_text(output / "results.json", json.dumps(results.to_json(), indent=2, default=str))
    budget = spec.budget
    budget_note = f"budget {budget}" if budget is not None else "each method's paper settings"
    atomic_write_text(
        output / "results.md",
        markdown_table(results.rows, header) + f"\n{len(spec.seeds)} seed(s); {budget_note}; parameters are "
        "those kept at inference, task head excluded; test metric mean ± std over seeds.\n"
    )
    plot(results.rows, results.runs, output / "results.png", header)
