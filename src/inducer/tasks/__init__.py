"""Tasks: built-in task names (the paper's experiments and offline data), local files, and encoding."""

from .base import TASKS, TaskData, TaskError, TaskSpec, get_task, group_references, load_task, register_task
from .files import Columns, load_files

__all__ = [
    "TASKS",
    "Columns",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "get_task",
    "group_references",
    "load_files",
    "load_task",
    "register_task",
    "all_tasks",
]


def all_tasks() -> dict[str, TaskSpec]:
    """Every registered task by name (the built-in ones are registered on first use)."""
    from . import builtin  # noqa: F401

    return dict(TASKS)
