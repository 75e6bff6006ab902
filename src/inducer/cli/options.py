"""The command line's options and logging setup: the shared options, the data options, and the
training options generated from ``TrainConfig``'s fields (one declaration: name, type, default, help).

Imports nothing heavy, so that ``inducer --help`` starts fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..training.config import TrainConfig

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
Adapter = Annotated[str, typer.Option("--adapter", "-a", help="adapter folder written by inducer train")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars, warnings only")]
Sizes = Annotated[
    str | None,
    typer.Option("--sizes", help="explicit method sizes instead of a budget, e.g. 'r_k=10,r_v=15'"),
]
ResultsFolder = Annotated[str | None, typer.Option("--output", "-o", help="folder for results.{json,md,png}")]
Resume = Annotated[
    bool, typer.Option("--resume", help="continue the run in OUTPUT from its checkpoint (same settings)")
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="replace the earlier run in OUTPUT (its files are removed first)")
]
NewSchedule = Annotated[
    bool,
    typer.Option(
        "--new-schedule",
        help="with --resume: continue on a new learning-rate schedule (--lr, --max-steps, --epochs, "
        "warmup) from the saved step; recorded in config.json",
    ),
]
SaveRuns = Annotated[bool, typer.Option("--save-runs", help="also keep every run's adapters and logs")]
Inputs = Annotated[list[str] | None, typer.Option("--input", "-i", help="input text (repeatable)")]
Split = Annotated[str, typer.Option("--split", help="train / validation / test (/ test_mismatched)")]
HeadTask = Annotated[
    str | None, typer.Option("--task", "-t", help="decides the model head (default: classification)")
]


def _param(name: str, annotation, default=None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


DATA_OPTIONS = [
    _param(
        "data_dir",
        Annotated[
            str | None,
            typer.Option(
                "--data-dir",
                help="local copy of a built-in task's data in the hub's format (train.jsonl, ...)",
            ),
        ],
    ),
    _param(
        "train_file", Annotated[str | None, typer.Option("--train-file", help="csv / tsv / json / jsonl")]
    ),
    _param("validation_file", Annotated[str | None, typer.Option("--validation-file")]),
    _param("test_file", Annotated[str | None, typer.Option("--test-file")]),
    _param("text_column", Annotated[str, typer.Option("--text-column")], "text"),
    _param(
        "text_pair_column",
        Annotated[str | None, typer.Option("--text-pair-column", help="second sentence of pair tasks")],
    ),
    _param("label_column", Annotated[str, typer.Option("--label-column")], "label"),
    _param("source_column", Annotated[str, typer.Option("--source-column")], "source"),
    _param("target_column", Annotated[str, typer.Option("--target-column")], "target"),
]
_SCALARS = {"float": float, "int": int, "str": str, "bool": bool}
# Boolean fields whose flag pair is not --NAME/--no-NAME (the second flag sets False).
_FLAG_PAIRS = {"train_head": "--train-head/--freeze-head"}


def training_options(only: tuple[str, ...] = (), help_texts: dict[str, str] | None = None) -> list:
    """Command-line options of ``TrainConfig``'s fields (``only``: these; default every field with a
    scalar type), each ``--field-name`` with the field's ``metadata["help"]``; None means "not given"."""
    params = []
    for f in dataclasses.fields(TrainConfig):
        kind = _SCALARS.get(str(f.type).removesuffix(" | None"))
        if kind is None or (only and f.name not in only):
            continue  # e.g. adam_betas (two numbers): set it in a recipe
        flag = f.metadata.get("cli") or "--" + f.name.replace("_", "-")
        if kind is bool and "/" not in flag:
            flag = _FLAG_PAIRS.get(f.name, f"{flag}/--no-{flag[2:]}")
        text = (help_texts or {}).get(f.name) or f.metadata.get("help", f.name)
        params.append(_param(f.name, Annotated[Optional[kind], typer.Option(flag, help=text)]))  # noqa: UP045
    return params


TRAIN_OPTIONS = training_options()
COMPARE_OPTIONS = training_options(
    help_texts={"lr": "one learning rate for every method (default: picked per method on validation)"}
)
EVAL_OPTIONS = training_options(only=("max_eval_examples", "eval_batch_size", "num_beams", "max_new_tokens"))
GENERATE_OPTIONS = training_options(only=("max_new_tokens", "max_length"))


def with_options(group: str, params: list[inspect.Parameter]):
    """Add ``params`` to a command's options; the command receives the given ones (not None) as one
    dict argument named ``group``."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        merged = [p for p in signature.parameters.values() if p.name != group] + params
        names = [p.name for p in params]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {n: kwargs.pop(n) for n in names}
            return command(**kwargs, **{group: {k: v for k, v in values.items() if v is not None}})

        wrapper.__signature__ = signature.replace(parameters=merged)
        wrapper.__annotations__ = {p.name: p.annotation for p in merged}
        return wrapper

    return decorate


def setup_logging(quiet: bool) -> None:
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


def refuse_output_onto_inputs(output_flag: str, output: str | None, inputs: dict[str, str | None]) -> None:
    """A ValueError (one line, exit 2) when ``output`` is one of the ``inputs`` (flag -> path), lies
    inside an input folder, or contains an input: writing (or ``--overwrite`` removing) there would
    change what the command reads. Inputs that are not local paths (hub ids) are skipped."""
    if not output:
        return
    out = Path(output).expanduser().resolve()
    for flag, given in inputs.items():
        if not given or given == "-" or not Path(given).expanduser().exists():
            continue
        source = Path(given).expanduser().resolve()
        if out == source:
            relation = "is"
        elif out.is_relative_to(source):
            relation = "lies inside"
        elif source.is_relative_to(out):
            relation = "contains"
        else:
            continue
        raise ConfigError(f"{output_flag} {output} {relation} the input {flag} {given}; choose an output "
                         "outside the inputs (writing there would change them)")  # fmt: skip
