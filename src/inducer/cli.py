"""The ``inducer`` command line: train, eval, generate, compare, info and demo.

Every command works offline with local model folders, the shortcuts ``minilm`` / ``smollm2-135m``, the
built-in offline data (``vader-movies``, ``e2e-synthetic``) and local files; with the hub, any model
id and the paper's tasks (``sst2``, ``mnli``, ``webnlg``, ``e2e``, ``dart``, ``coqa``,
``cnn_dailymail``, ``xsum``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Inducer-tuning and PEFT baselines: train, evaluate, generate and compare.",
)
console = Console(stderr=False)
errors = Console(stderr=True)


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
    _GLOBAL["threads"] = threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def auto_threads() -> int:
    """PyTorch threads for the cores that other processes leave free (at least one).

    Threads sharing a core with another busy process wait for each other at every parallel operation:
    on a 2-core machine running one other job, a MiniLM training step took 6.7 s with 2 threads and
    about 0.7 s with 1.
    """
    import os

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
DEMO_LRS = {"full": 1e-4, "prefix": 3e-4, "lora": 3e-3, "inducer": 3e-3, "inducer+lora": 3e-3}

# ------------------------------------------------------------------------------------------------
# Shared options
# ------------------------------------------------------------------------------------------------
Model = Annotated[
    str | None, typer.Option("--model", "-m", help="hub id, local folder, or minilm / smollm2-135m")
]
Task = Annotated[
    str | None,
    typer.Option(
        "--task",
        "-t",
        help="built-in task (see `inducer info`), or classification / regression / generation "
        "with --train-file",
    ),
]
Method = Annotated[str | None, typer.Option("--method", help="method name (see `inducer info`)")]
Budget = Annotated[
    str | None,
    typer.Option(
        "--budget", "-b", help="parameter budget: a count (600000) or a percentage of the base model ('0.5%')"
    ),
]
Recipe = Annotated[str | None, typer.Option("--recipe", help="recipe YAML file or bundled recipe name")]
DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="local copy of a built-in task's data in the hub's format (train.jsonl, ...)"
    ),
]
TrainFile = Annotated[str | None, typer.Option("--train-file", help="csv / tsv / json / jsonl")]
ValFile = Annotated[str | None, typer.Option("--validation-file")]
TestFile = Annotated[str | None, typer.Option("--test-file")]
TextCol = Annotated[str, typer.Option("--text-column")]
PairCol = Annotated[str | None, typer.Option("--text-pair-column", help="second sentence of pair tasks")]
LabelCol = Annotated[str, typer.Option("--label-column")]
SourceCol = Annotated[str, typer.Option("--source-column")]
TargetCol = Annotated[str, typer.Option("--target-column")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars, warnings only")]


def _opt(help_text: str, *names: str):
    return typer.Option(*names, help=help_text)


Lr = Annotated[float | None, _opt("peak learning rate", "--lr")]
BatchSize = Annotated[int | None, _opt("training batch size", "--batch-size")]
EvalBatch = Annotated[int | None, _opt("evaluation batch size", "--eval-batch-size")]
GradAccum = Annotated[int | None, _opt("gradient accumulation steps", "--grad-accum")]
Epochs = Annotated[float | None, _opt("training epochs (fractions allowed)", "--epochs")]
MaxSteps = Annotated[int | None, _opt("optimizer steps (overrides --epochs)", "--max-steps")]
Warmup = Annotated[float | None, _opt("warmup as a fraction of the steps", "--warmup-ratio")]
WarmupSteps = Annotated[int | None, _opt("warmup steps (overrides --warmup-ratio)", "--warmup-steps")]
WeightDecay = Annotated[float | None, _opt("AdamW weight decay", "--weight-decay")]
MaxLen = Annotated[int | None, _opt("max input (or source) tokens", "--max-length")]
MaxTarget = Annotated[int | None, _opt("max target tokens (generation)", "--max-target-length")]
Seed = Annotated[int | None, _opt("random seed", "--seed")]
Precision = Annotated[str | None, _opt("no / fp16 / bf16", "--precision")]
Checkpointing = Annotated[
    bool | None, _opt("gradient checkpointing", "--gradient-checkpointing/--no-gradient-checkpointing")
]
Smoothing = Annotated[float | None, _opt("label smoothing", "--label-smoothing")]
EvalEvery = Annotated[int | None, _opt("evaluate every N steps (default: each epoch)", "--eval-every")]
SaveEvery = Annotated[int | None, _opt("checkpoint for --resume every N steps", "--save-every")]
Patience = Annotated[int | None, _opt("early stopping: evaluations without improvement", "--patience")]
Select = Annotated[str | None, _opt("validation metric for model selection", "--select-metric")]
MaxTrain = Annotated[int | None, _opt("use at most N training rows", "--max-train-examples")]
MaxEval = Annotated[int | None, _opt("use at most N validation / test rows", "--max-eval-examples")]
Beams = Annotated[int | None, _opt("beam size for generation (1 = greedy)", "--num-beams")]
NewTokens = Annotated[int | None, _opt("max generated tokens", "--max-new-tokens")]
FreezeHead = Annotated[
    bool | None, _opt("freeze a new task head (the released NLU code's choice)", "--freeze-head/--train-head")
]


def _setup(quiet: bool) -> None:
    """Logging and third-party chatter: our INFO lines (unless quiet), others' warnings only."""
    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Under `accelerate launch` only the first process reports progress (RANK is set by the launcher).
    quiet = quiet or int(os.environ.get("RANK", "0")) > 0
    logging.getLogger("inducer").setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()  # e.g. "classifier newly initialised": expected for a new head
    transformers.logging.disable_progress_bar()


def _fail(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn):
    """Run a command body, turning the errors users can fix into one clear line and exit code 2."""
    from .adapter_format import AdapterFormatError
    from .base_models import ModelLoadError
    from .recipes import RecipeError
    from .tasks import TaskError

    try:
        return fn()
    except (
        TaskError,
        RecipeError,
        ModelLoadError,
        AdapterFormatError,
        FileNotFoundError,
        ValueError,
    ) as err:
        _fail(str(err))


def _source(
    task: str | None,
    data_dir,
    train_file,
    validation_file,
    test_file,
    text_column,
    text_pair_column,
    label_column,
    source_column,
    target_column,
):
    from .experiment import TaskSource
    from .tasks import Columns

    if task is None:
        _fail(
            "--task is required (a built-in task name, or classification / regression / generation with "
            "--train-file)"
        )
    return TaskSource(
        task,
        data_dir,
        train_file,
        validation_file,
        test_file,
        Columns(text_column, text_pair_column, label_column, source_column, target_column),
    )


def _overrides(options: dict, exclude: tuple[str, ...] = ()) -> dict:
    """The training options among a command's arguments (``locals()``) that were given (None = not
    given), named as ``TrainConfig`` fields; ``exclude`` names arguments the command handles itself."""
    from .training import TrainConfig

    fields = TrainConfig.field_names() - set(exclude)
    values = {k: v for k, v in options.items() if k in fields and v is not None}
    if options.get("freeze_head") is not None:
        values["train_head"] = not options["freeze_head"]  # the flag is --freeze-head
    return values


def _parse_sizes(text: str | None) -> dict | None:
    """``'r_k=10,r_v=15'`` -> ``{'r_k': 10, 'r_v': 15}``."""
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            sizes[key.strip()] = int(value)
        except ValueError:
            _fail(f"--sizes: {part!r} is not NAME=INTEGER (e.g. --sizes r_k=10,r_v=15)")
    return sizes


def _print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _results_table(rows: list[dict], title: str) -> Table:
    from .compare import format_score

    table = Table(title=title)
    metric = rows[0]["metric"] if rows else "metric"
    for name, justify in (
        ("method", "left"),
        ("parameters", "right"),
        ("% of base", "right"),
        (f"test {metric}", "right"),
        ("lr", "right"),
        ("train time", "right"),
    ):
        table.add_column(name, justify=justify)
    for r in rows:
        score = format_score(r)
        table.add_row(
            r["method"],
            f"{r['parameters']:,}",
            f"{r['percent_of_base']:.3f}%",
            score,
            f"{r['lr']:g}",
            f"{r['train_seconds']:.0f} s",
        )
    return table


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------
@app.command()
def train(
    model: Model = None,
    task: Task = None,
    method: Method = None,
    budget: Budget = None,
    recipe: Recipe = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="output folder")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUTPUT/checkpoint")] = False,
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValFile = None,
    test_file: TestFile = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    source_column: SourceCol = "source",
    target_column: TargetCol = "target",
    lr: Lr = None,
    batch_size: BatchSize = None,
    eval_batch_size: EvalBatch = None,
    grad_accum: GradAccum = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    warmup_ratio: Warmup = None,
    warmup_steps: WarmupSteps = None,
    weight_decay: WeightDecay = None,
    max_length: MaxLen = None,
    max_target_length: MaxTarget = None,
    seed: Seed = None,
    precision: Precision = None,
    gradient_checkpointing: Checkpointing = None,
    label_smoothing: Smoothing = None,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    patience: Patience = None,
    select_metric: Select = None,
    max_train_examples: MaxTrain = None,
    max_eval_examples: MaxEval = None,
    num_beams: Beams = None,
    max_new_tokens: NewTokens = None,
    freeze_head: FreezeHead = None,
    sizes: Annotated[
        str | None,
        typer.Option("--sizes", help="explicit method sizes instead of a budget, e.g. 'r_k=10,r_v=15'"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train one method; save best/ and last/ adapters, config.json, metrics.jsonl and TensorBoard logs."""
    _setup(quiet)
    overrides = _overrides(locals())  # first: only the command's arguments are in locals()

    def body():
        from .experiment import is_main_process, train_run
        from .recipes import load_recipe
        from .training import TrainConfig

        chosen_model, chosen_task, chosen_method, chosen_budget, chosen_dir = (
            model,
            task,
            method,
            budget,
            data_dir,
        )
        chosen_sizes = _parse_sizes(sizes)
        if recipe:
            r = load_recipe(recipe)
            if chosen_sizes is None and budget is None:
                chosen_sizes = r.method_sizes.get(method or r.methods[0])
            chosen_model, chosen_task = model or r.model, task or r.task
            chosen_method, chosen_budget = method or r.methods[0], budget if budget is not None else r.budget
            chosen_dir = data_dir or r.data_dir
            config = (
                r.train_config(chosen_method, overrides)
                if chosen_method in r.methods
                else TrainConfig(**{**r.training, **overrides})
            )
        else:
            config = TrainConfig(**overrides)
        if not chosen_model:
            _fail("--model is required (or a --recipe naming one)")
        if not chosen_method:
            _fail("--method is required (e.g. --method inducer; `inducer info` lists them)")
        if not output:
            _fail("--output is required: the folder for adapters, logs and results")
        source = _source(
            chosen_task,
            chosen_dir,
            train_file,
            validation_file,
            test_file,
            text_column,
            text_pair_column,
            label_column,
            source_column,
            target_column,
        )
        result = train_run(
            chosen_model,
            source,
            chosen_method,
            config,
            chosen_budget,
            output,
            resume=resume,
            progress=not quiet,
            sizes=chosen_sizes,
        )
        if not is_main_process():  # under `accelerate launch`, the first process reports
            return
        console.print(result["summary"])
        console.print(
            f"best validation {result['select_metric']} {result['best_validation']:.4f} at step "
            f"{result['best_step']} of {result['steps']}; {result['train_seconds']:.0f} s training"
        )
        for split, metrics in result["test"].items():
            _print_metrics(f"{split} (best adapter)", metrics)
        console.print(
            f"adapters: {output}/best, {output}/last; logs: {output}/metrics.jsonl, {output}/tensorboard"
        )

    _guard(body)


@app.command("eval")
def eval_command(
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="adapter folder written by inducer train")],
    model: Model = None,
    task: Task = None,
    split: Annotated[
        str, typer.Option("--split", help="train / validation / test (/ test_mismatched)")
    ] = "test",
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValFile = None,
    test_file: TestFile = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    source_column: SourceCol = "source",
    target_column: TargetCol = "target",
    max_eval_examples: MaxEval = None,
    eval_batch_size: EvalBatch = None,
    num_beams: Beams = None,
    max_new_tokens: NewTokens = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="write the metrics JSON here")] = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a saved adapter on a task split (by default the task it was trained on)."""
    _setup(quiet)

    def body():
        from .experiment import evaluate_adapter, read_run_info
        from .training import TrainConfig

        source = None
        if task is not None:
            source = _source(
                task,
                data_dir,
                train_file,
                validation_file,
                test_file,
                text_column,
                text_pair_column,
                label_column,
                source_column,
                target_column,
            )
        saved = read_run_info(adapter).get("train", {})
        values = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
        values.update(
            _overrides(
                dict(
                    max_eval_examples=max_eval_examples,
                    eval_batch_size=eval_batch_size,
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens,
                )
            )
        )
        metrics = evaluate_adapter(model, adapter, source, split, TrainConfig(**values), progress=not quiet)
        _print_metrics(f"{split}: {adapter}", metrics)
        text = json.dumps({"adapter": adapter, "split": split, "metrics": metrics}, indent=2)
        if output:
            Path(output).write_text(text)
        console.print_json(text)

    _guard(body)


@app.command()
def generate(
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="adapter folder written by inducer train")],
    model: Model = None,
    input_text: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="input text (repeatable)")
    ] = None,
    file: Annotated[str | None, typer.Option("--file", "-f", help="one input per line ('-' = stdin)")] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", help="1 = greedy")] = 1,
    max_new_tokens: NewTokens = None,
    max_length: MaxLen = None,
    quiet: Quiet = False,
) -> None:
    """Generate from inputs with a saved adapter (KV-cached greedy or beam search).

    For a classification or regression adapter, prints each input's prediction instead; pair inputs
    are given as ``first<TAB>second``.
    """
    _setup(quiet)

    def body():
        import torch

        from .encoding import EncodeOptions, encode_classification
        from .experiment import load_trained
        from .training import generate_texts, predict_labels

        texts = list(input_text or [])
        if file:
            handle = sys.stdin if file == "-" else open(file, encoding="utf-8")
            with handle:
                texts += [line.rstrip("\n") for line in handle if line.strip()]
        if not texts:
            _fail("give inputs with --input TEXT (repeatable) or --file FILE")
        loaded, info = load_trained(model, adapter)
        encode = info.get("encode", {})
        options = EncodeOptions(**{**encode, **({"max_length": max_length} if max_length else {})})
        with torch.no_grad():
            if info.get("kind") == "generation":
                outputs = generate_texts(
                    loaded.model,
                    loaded.tokenizer,
                    texts,
                    options,
                    loaded.is_seq2seq,
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens or info.get("train", {}).get("max_new_tokens")
                    or info.get("max_new_tokens", 40),
                )
            else:
                import datasets

                pairs = [t.split("\t", 1) for t in texts]
                rows = datasets.Dataset.from_list(
                    [{"text": p[0], "text_pair": p[1] if len(p) > 1 else None, "label": 0} for p in pairs]
                )
                encoded = encode_classification(rows, loaded.tokenizer, options.max_length, "inputs")
                regression = info.get("kind") == "regression"
                predictions = predict_labels(loaded.model, encoded, loaded.tokenizer, 32, regression)
                names = info.get("label_names")
                outputs = [f"{p:.4f}" if regression else (names[p] if names else str(p)) for p in predictions]
        from rich.markup import escape

        for text, out in zip(texts, outputs, strict=True):  # escaped: E2E inputs look like markup
            console.print(f"[dim]{escape(text)}[/]\n{escape(out)}\n", highlight=False)

    _guard(body)


@app.command()
def compare(
    model: Model = None,
    task: Task = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated method names")] = None,
    budget: Budget = None,
    seeds: Annotated[int, typer.Option("--seeds", help="runs per method (seeds 42, 43, ...)")] = 1,
    recipe: Recipe = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="folder for results.{json,md,png}")
    ] = None,
    save_runs: Annotated[
        bool, typer.Option("--save-runs", help="also keep every run's adapters and logs")
    ] = False,
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValFile = None,
    test_file: TestFile = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    source_column: SourceCol = "source",
    target_column: TargetCol = "target",
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="one learning rate for every method (default: "
            "picked per method on validation from a small grid)",
        ),
    ] = None,
    batch_size: BatchSize = None,
    eval_batch_size: EvalBatch = None,
    grad_accum: GradAccum = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    warmup_ratio: Warmup = None,
    warmup_steps: WarmupSteps = None,
    weight_decay: WeightDecay = None,
    max_length: MaxLen = None,
    max_target_length: MaxTarget = None,
    precision: Precision = None,
    label_smoothing: Smoothing = None,
    eval_every: EvalEvery = None,
    patience: Patience = None,
    select_metric: Select = None,
    max_train_examples: MaxTrain = None,
    max_eval_examples: MaxEval = None,
    num_beams: Beams = None,
    max_new_tokens: NewTokens = None,
    quiet: Quiet = False,
) -> None:
    """Train several methods at a matched budget, over seeds; write results.json, results.md, results.png."""
    _setup(quiet)
    overrides = _overrides(locals(), exclude=("lr",))  # --lr replaces the grid search (below)

    def body():
        from . import compare as comparison
        from .recipes import load_recipe
        from .training import TrainConfig

        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        chosen_model, chosen_task, chosen_budget, chosen_dir = model, task, budget, data_dir
        per_method, lrs, method_sizes = {}, {}, {}
        if recipe:
            r = load_recipe(recipe)
            chosen_model, chosen_task, chosen_dir = model or r.model, task or r.task, data_dir or r.data_dir
            chosen_budget = budget if budget is not None else r.budget
            chosen = chosen or r.methods
            per_method = {m: r.train_config(m, overrides) for m in chosen if m in r.methods}
            # A recipe's learning rates are the paper's: use them rather than a grid search.
            lrs = {
                m: c.lr
                for m, c in per_method.items()
                if "lr" in {**r.training, **r.method_training.get(m, {})}
            }
            config = TrainConfig(**{**r.training, **overrides})
            method_sizes = r.method_sizes if budget is None else {}  # a --budget replaces the recipe's sizes
        else:
            config = TrainConfig(**overrides)
        if lr is not None:
            lrs = {m: lr for m in chosen or []}
        if not chosen_model or not chosen:
            _fail("--model and --methods are required (or a --recipe naming them)")
        if not output:
            _fail("--output is required: the folder for results.json, results.md and results.png")
        source = _source(
            chosen_task,
            chosen_dir,
            train_file,
            validation_file,
            test_file,
            text_column,
            text_pair_column,
            label_column,
            source_column,
            target_column,
        )
        title = f"{chosen_model} x {chosen_task}" + (f", budget {chosen_budget}" if chosen_budget else "")
        seed_list = [config.seed + i for i in range(seeds)]
        comparison.compare(
            chosen_model,
            source,
            chosen,
            config,
            chosen_budget,
            seed_list,
            lrs,
            per_method,
            output,
            title,
            progress=not quiet,
            save_runs=save_runs,
            on_row=lambda rows: console.print(_results_table(rows, title)),
            sizes=method_sizes,
        )
        console.print(f"wrote {output}/results.md, results.json, results.png")

    _guard(body)


@app.command()
def info(
    model: Model = None,
    method: Method = None,
    budget: Budget = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="decides the model head (default: classification)")
    ] = None,
    num_labels: Annotated[int, typer.Option("--num-labels")] = 2,
) -> None:
    """Parameter counts and chosen sizes of methods on a model; without --model, what is available."""
    _setup(quiet=True)

    def body():
        from .base_models import SHORTCUTS
        from .presets import PRESETS
        from .recipes import RECIPES_DIR
        from .tasks import all_tasks

        if model is None:
            table = Table(title="methods (--method)")
            table.add_column("name")
            table.add_column("description")
            for name, spec in PRESETS.items():
                table.add_row(name, spec.description)
            console.print(table)
            table = Table(title="tasks (--task)")
            for column in ("name", "kind", "source", "description"):
                table.add_column(column)
            for name, spec in all_tasks().items():
                where = (
                    f"{spec.hub[0]}" + (f" ({spec.hub[1]})" if spec.hub and spec.hub[1] else "")
                    if spec.hub
                    else "offline, built in"
                )
                table.add_row(name, spec.kind, where, spec.description)
            table.add_row(
                "classification / regression / generation", "", "--train-file ...", "your own files"
            )
            console.print(table)
            table = Table(title="offline model shortcuts (--model)")
            table.add_column("name")
            table.add_column("what")
            for name, what in SHORTCUTS.items():
                table.add_row(name, what)
            console.print(table)
            recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
            console.print("recipes (--recipe): " + ", ".join(recipes))
            return
        import inducer

        from .base_models import load_model
        from .tasks import get_task

        kind, labels = "classification", num_labels
        if task in ("classification", "regression", "generation"):
            kind = task
        elif task:
            spec = get_task(task)
            kind, labels = spec.kind, spec.num_labels or num_labels
        names = [method] if method else list(PRESETS)
        table = Table(title=f"{model}" + (f", budget {budget}" if budget else ", paper settings"))
        for column in ("method", "sizes", "parameters", "% of base", "trained", "task head"):
            table.add_column(column, justify="left" if column in ("method", "sizes") else "right")
        for name in names:
            if name not in PRESETS:
                _fail(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
            loaded = load_model(model, kind, labels)
            configs = inducer.preset(name, loaded.model, budget)
            inducer.attach(loaded.model, list(configs))
            count = inducer.count_parameters(loaded.model)
            sizes = ", ".join(
                f"{k}={v if k != 'layers' else f'top {len(v)}'}" for k, v in configs.knobs.items()
            )
            table.add_row(
                name,
                sizes or "-",
                f"{configs.count:,}",
                f"{100 * configs.count / count.base:.3f}%",
                f"{count.trainable:,}",
                f"{count.head:,}",
            )
            if method:
                console.print(configs.summary)
        console.print(table)
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
    quiet: Quiet = False,
) -> None:
    """The main job: full fine-tuning, prefix-tuning, LoRA, inducer and inducer+LoRA at a matched ~0.5%
    budget on MiniLM x vader-movies, printing the table as it goes; writes OUTPUT/results.{md,json,png}."""
    _setup(quiet)

    def body():
        import torch

        from . import compare as comparison
        from .experiment import TaskSource
        from .training import TrainConfig

        started = time.perf_counter()
        if _GLOBAL["threads"] is None:
            torch.set_num_threads(auto_threads())  # the demo has a time budget: avoid oversubscribing
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        config = TrainConfig(
            batch_size=16,
            eval_batch_size=128,
            epochs=epochs,
            max_length=max_length,
            weight_decay=0.01,
            warmup_ratio=0.06,
            eval_every=None,
            max_train_examples=train_examples,
            max_eval_examples=eval_examples,
            seed=42,
        )
        # Three validation points per run give the learning curves in results.png.
        steps = max(1, int(train_examples / config.batch_size * epochs))
        config.eval_every = max(1, -(-steps // 3))
        title = f"{model} x {task}, budget {budget}"
        console.print(
            f"[bold]inducer demo[/]: {', '.join(chosen)} on {title}; {train_examples} training rows, "
            f"{epochs:g} epoch(s), max length {max_length}; {torch.get_num_threads()} CPU thread(s)"
        )
        source = TaskSource(task)
        task_data = source.load()
        comparison.compare(
            model,
            source,
            chosen,
            config,
            budget,
            [config.seed],
            {m: DEMO_LRS.get(m, 1e-3) for m in chosen},
            None,
            output,
            title,
            progress=not quiet,
            task=task_data,
            on_row=lambda rows: console.print(_results_table(rows, title)),
        )
        seconds = time.perf_counter() - started
        _stamp(Path(output), seconds)
        console.print(
            f"wrote {output}/results.md, {output}/results.json, {output}/results.png in {seconds:.0f} s"
        )

    _guard(body)


def _stamp(output: Path, seconds: float) -> None:
    """Add when, where and how long a demo ran to its results (the README quotes them)."""
    import datetime
    import os
    import platform

    import torch
    import transformers

    machine = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with open(output / "results.md", "a") as f:
        f.write(f"\nRun {when} on {machine}: {seconds:.0f} s wall time (loading, training and evaluation).\n")
    data = json.loads((output / "results.json").read_text())
    data["environment"] = {"date": when, "machine": machine, "wall_seconds": seconds}
    (output / "results.json").write_text(json.dumps(data, indent=2, default=str))


def main() -> None:
    """Entry point of ``python -m inducer``."""
    app()
