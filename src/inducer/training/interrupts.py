"""Ctrl-C and ``kill`` during training: the first SIGINT / SIGTERM asks the loop to stop after the
current optimizer step (which then writes a checkpoint and ``last/``); a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving what ``--resume`` needs; ``exit_code`` is 128 + the
    signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequests:
    """While active (``with``), records the first SIGINT / SIGTERM in ``received`` instead of dying;
    a second signal prints one line and ends the process at once. Outside the main thread (where
    Python cannot install handlers) it does nothing and ``received`` stays None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            sys.stderr.write(f"\n{name} again: exiting now, without saving the current step\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.received = signum
        sys.stderr.write(
            f"\n{name}: finishing the current step, then saving a checkpoint (press Ctrl-C again to "
            "exit at once)\n"
        )
        sys.stderr.flush()


def interrupted(signum: int, step: int, total: int, output_dir: Path | None) -> TrainingInterrupted:
    """The error a stopped run raises: where it stopped, what it saved, how to continue."""
    name = signal.Signals(signum).name
    if output_dir is None:
        return TrainingInterrupted(signum, f"{name}: training stopped at step {step}; nothing saved")
    return TrainingInterrupted(
        signum,
        f"{name}: training stopped at step {step} of {total}; saved {output_dir / 'checkpoint'} and "
        f"{output_dir / 'last'}. Continue with the same command and --resume",
    )
