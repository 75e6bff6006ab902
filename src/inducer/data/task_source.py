"""Where a task's data comes from (``TaskSource``): a built-in task, or a kind and the user's files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tasks import Columns, TaskData, TaskError, load_files, load_task
from .tasks.base import KINDS


@dataclass
class TaskSource:
    """Where a task's data comes from: a built-in name (optionally with a local ``data_dir`` in the
    hub format), or a kind (classification / regression / generation) with the user's files."""

    task: str
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    columns: Columns = field(default_factory=Columns)

    def load(self) -> TaskData:
        """The task's normalised splits."""
        if self.train_file or self.task in KINDS:
            return load_files(self.task, self.train_file, self.validation_file, self.test_file, self.columns)
        if self.validation_file or self.test_file:
            raise TaskError(
                f"--validation-file/--test-file need --train-file; built-in task {self.task!r} "
                "brings its own splits (use --data-dir for local copies)"
            )
        return load_task(self.task, self.data_dir)

    def to_dict(self) -> dict:
        """JSON form, stored with adapters so eval can reload the same data (from any folder)."""
        data = {**asdict(self), "columns": asdict(self.columns)}
        for key in ("data_dir", "train_file", "validation_file", "test_file"):
            if data[key]:
                data[key] = str(Path(data[key]).resolve())
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskSource:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        return cls(**{**data, "columns": Columns(**data.get("columns", {}))})
