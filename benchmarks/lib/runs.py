"""Recording what a training run does, through the trainer's public callbacks."""

from __future__ import annotations

from inducer.training.callbacks import TrainerCallback


class LossCurve(TrainerCallback):
    """Keeps the (step, training loss) pairs the trainer logs (one every ``log_every`` steps)."""

    def __init__(self, digits: int = 4):
        self.digits = digits
        self.points: list[list[float]] = []

    def on_log(self, step: int, record: dict) -> None:
        """Keep training records; validation records are the run's history already."""
        if record.get("split") == "train":
            self.points.append([step, round(float(record["loss"]), self.digits)])
