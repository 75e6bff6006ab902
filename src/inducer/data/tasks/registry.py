"""The tasks ``--task`` knows by name: the built-in ones (:mod:`inducer.data.tasks.builtin`) and any a
user registers with :func:`register_task`. Nothing is registered by importing a module."""

from __future__ import annotations

from pathlib import Path

from .base import KINDS, TaskData, TaskError, TaskSpec, load_spec
from .builtin import BUILTIN_TASKS

TASKS: dict[str, TaskSpec] = dict(BUILTIN_TASKS)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make a task known to ``--task`` by its name."""
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``, or a :class:`TaskError` listing the known ones."""
    if name not in TASKS:
        raise TaskError(
            f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}. For your own data "
            f"use --task {{{'|'.join(KINDS)}}} with --train-file/--validation-file/--test-file"
        )
    return TASKS[name]


def all_tasks() -> dict[str, TaskSpec]:
    """Every registered task by name."""
    return dict(TASKS)


def load_task(name: str, data_dir: str | Path | None = None) -> TaskData:
    """Load registered task ``name`` (see :func:`inducer.data.tasks.base.load_spec`)."""
    return load_spec(get_task(name), data_dir)
