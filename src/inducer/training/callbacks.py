"""Hooks into the training loop: ``TrainerCallback``, and the run's metric log built on it.

A ``Trainer`` calls its callbacks on every process with the same values (losses are global means), so
a benchmark can record a loss curve or metrics without subclassing the trainer or patching it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..io.atomic import atomic_write_text

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class TrainerCallback:
    """Hooks a ``Trainer`` calls while it trains; subclass and override the ones you need.

    ``on_step`` gets every optimizer step's mean training loss and learning rate (a loss curve);
    ``on_log`` every record the run logs (``record["split"]`` is ``"train"``, every ``log_every``
    steps, or ``"validation"``), with or without an output folder; ``on_eval`` the metrics of each
    validation evaluation, before model selection.
    """

    def on_step(self, step: int, loss: float, lr: float) -> None:
        """After optimizer step ``step``: its mean training loss and the learning rate for the next."""

    def on_log(self, step: int, record: dict) -> None:
        """After a record of step ``step`` was logged."""

    def on_eval(self, step: int, metrics: dict) -> None:
        """After the validation evaluation at step ``step``."""


class EvalFunction(TrainerCallback):
    """A plain ``function(step, metrics)`` as an ``on_eval`` callback (``Trainer``'s ``on_eval=``)."""

    def __init__(self, function: Callable[[int, dict], None]):
        self.function = function

    def on_eval(self, step: int, metrics: dict) -> None:
        """Call the function."""
        self.function(step, metrics)


class MetricsLog(TrainerCallback):
    """Writes each logged record to ``folder/metrics.jsonl`` and, when installed, TensorBoard."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer = None

    def open(self) -> None:
        """Start the TensorBoard writer (skipped with a warning when tensorboard is not installed)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("TensorBoard logs skipped: pip install tensorboard")
            return
        self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_log(self, step: int, record: dict) -> None:
        """Append ``record`` to the log; its numbers to TensorBoard, under ``split/name``."""
        with open(self.folder / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record.get('split', 'train')}/{key}", value, step)

    def truncate(self, step: int) -> None:
        """On resume, drop what a crashed run logged after its last checkpoint at ``step`` (redone)."""
        path = self.folder / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))
