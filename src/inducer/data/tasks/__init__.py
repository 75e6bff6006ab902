"""Tasks: built-in task names (the paper's experiments and offline data), local files, and encoding."""

from .base import TaskData, TaskError, TaskSpec, group_references, load_spec
from .files import Columns, load_files
from .registry import TASKS, all_tasks, get_task, load_task, register_task

__all__ = [
    "TASKS",
    "Columns",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "group_references",
    "load_files",
    "load_spec",
    "load_task",
    "register_task",
]
