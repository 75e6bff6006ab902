"""SIGINT / SIGTERM during ``inducer train`` (a real subprocess): the first signal finishes the current
step, saves a checkpoint and last/, says how to resume and exits 130 / 143; a second exits at once."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from inducer.training.checkpoint import load_train_state

from ..tiny import single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

# Runs the command line; after each optimizer step it reports the step on stdout, and each micro-batch
# pauses, which gives the test time to send its signals while a step is under way.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from inducer.training import trainer as training
    from inducer.cli.main import app

    report, forward_backward = training.Trainer._report_step, training.Trainer._forward_backward
    pause = float(sys.argv[1])

    def reporting(self, state, loss, bar):
        report(self, state, loss, bar)
        print("step", state.step, flush=True)

    def pausing(self, rows, state, bar):
        print("in step", state.step + 1, flush=True)  # a micro-batch of this step is under way
        time.sleep(pause)
        return forward_backward(self, rows, state, bar)

    training.Trainer._report_step, training.Trainer._forward_backward = reporting, pausing
    sys.argv = ["inducer", *sys.argv[2:]]
    app()
    """
)


def _start(tiny_models, out, pause: float, *extra: str) -> subprocess.Popen:
    args = ["train", *extra, "--model", str(tiny_models["bert"]), "--task", "sst2",
            "--data-dir", task_dir("sst2"), "--method", "lora", "--output", str(out), "--max-length", "32",
            "--batch-size", "8",
            "--max-steps", "100000", "--eval-every", "100000", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(pause), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(child: subprocess.Popen, expected: str) -> None:
    for line in child.stdout:
        if line.strip() == expected:
            return
    raise AssertionError(f"the child ended before printing {expected!r}: {child.stderr.read()}")


def _wait_for_step(child: subprocess.Popen, step: int) -> None:
    _wait_for_line(child, f"step {step}")


@pytest.mark.parametrize(
    ("signum", "code", "accumulation"), [(signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "2")]
)
def test_first_signal_saves_a_checkpoint_and_last_then_exits(
    tiny_models, tmp_path, signum, code, accumulation
):
    child = _start(tiny_models, tmp_path, 1.0, "--grad-accum", accumulation)
    try:
        # During step 3's first micro-batch (not merely after step 2, which on a loaded machine can be
        # before step 3 began): training stops after step 3.
        _wait_for_line(child, "in step 3")
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == code, stderr
    assert "Continue with the same command and --resume" in stderr
    assert "Traceback" not in stderr
    state = load_train_state(tmp_path / "checkpoint")
    assert state.step == 3 and "step 3" in stdout  # the step under way was finished, then saved
    assert state.batch % int(accumulation) == 0  # between optimizer steps, never inside accumulation
    assert (tmp_path / "last" / "inducer_run.json").is_file()


def test_a_second_signal_exits_at_once(tiny_models, tmp_path):
    child = _start(tiny_models, tmp_path, 30.0)  # the step after the first signal never ends
    try:
        _wait_for_step(child, 1)
        child.send_signal(signal.SIGTERM)
        for line in child.stderr:
            if "finishing the current step" in line:
                break
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=20)  # far less than the 30 s the step still had
    finally:
        child.kill()
    assert child.returncode == 143
    assert "SIGTERM again: exiting now" in stderr
    assert not (tmp_path / "last").exists()
