"""One owner per output folder: the lock, refusing another run's folder, --overwrite, and --resume's
checks (base weights, method, options) made before anything is rewritten; --new-schedule recorded."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from inducer.training.run_folder import (
    LOCK_FILE,
    RunFolderError,
    folder_lock,
    prepare_run_folder,
    run_differences,
)

from ..tiny import run_cli, single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = ["--max-length", "32", "--batch-size", "8", "--lr", "5e-3", "--quiet", "--max-steps", "2"]


def _train(model, out, *extra, expect=0, method="lora"):
    args = ["train", "--model", model, "--task", "sst2", "--data-dir", task_dir("sst2"), "--method", method]
    return run_cli(*args, "--output", out, *FAST, *extra, expect=expect)


def _files(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(tiny_models, tmp_path):
    _train(tiny_models["bert"], tmp_path)
    before = _files(tmp_path)
    result = _train(tiny_models["bert"], tmp_path, "--lr", "1e-3", expect=2)
    assert "already holds files" in result.output and "--overwrite" in result.output
    assert _files(tmp_path) == before  # no appended metrics, no new best/, config.json unchanged


def test_overwrite_clears_the_old_run_first(tiny_models, tmp_path):
    _train(tiny_models["bert"], tmp_path, "--max-steps", "4", "--eval-every", "1")
    (tmp_path / "checkpoint" / "stale-marker").write_text("old")  # inside a run entry: removed with it
    _train(tiny_models["bert"], tmp_path, "--overwrite")
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # only the new run's records, none of the old 4-step run's
    assert not (tmp_path / "checkpoint" / "stale-marker").exists()
    assert json.loads((tmp_path / "config.json").read_text())["train"]["max_steps"] == 2


def test_overwrite_never_removes_files_inducer_did_not_write(tiny_models, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    result = _train(tiny_models["bert"], tmp_path, "--overwrite", expect=2)
    assert "thesis.tex" in result.output and "nothing was removed" in result.output
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunFolderError, match="contradict"):
        prepare_run_folder(tmp_path, {}, resume=True, overwrite=True)
    with pytest.raises(RunFolderError, match="--resume"):
        prepare_run_folder(tmp_path, {}, resume=False, overwrite=False, new_schedule=True)


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="no run to continue"):
        prepare_run_folder(tmp_path, {"model": "m"}, resume=True, overwrite=False)


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        ("inducer", [], 'method: "lora" -> "inducer"'),
        ("lora", ["--sizes", "r=2"], "sizes"),
        ("lora", ["--lr", "1e-3"], "lr: 0.005 -> 0.001"),
        ("lora", ["--weight-decay", "0.0"], "weight_decay: 0.1 -> 0.0"),
    ],
)
def test_resume_refuses_another_method_size_or_option_before_rewriting_anything(
    tiny_models, tmp_path, method, extra, expected
):
    _train(tiny_models["bert"], tmp_path, "--save-every", "1")
    before = _files(tmp_path)
    result = _train(tiny_models["bert"], tmp_path, "--resume", *extra, method=method, expect=2)
    assert "is another run" in result.output and expected in result.output
    assert _files(tmp_path) == before


def test_resume_refuses_another_base_with_the_same_shapes(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-bert"
    shutil.copytree(tiny_models["bert"], other)
    weights = load_file(other / "model.safetensors")
    name = next(n for n in weights if "query.weight" in n)
    weights[name] = weights[name] + 0.01  # same architecture and shapes, other weights
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    _train(str(other), out, "--save-every", "1")
    config = (out / "config.json").read_bytes()
    # The model path is part of the run too: give the other folder the original's name.
    original = tmp_path / "original-bert"
    shutil.copytree(tiny_models["bert"], original)
    shutil.rmtree(other)
    original.rename(other)
    result = _train(str(other), out, "--resume", expect=2)
    assert "base_weights_sha256" in result.output
    assert (out / "config.json").read_bytes() == config


def test_new_schedule_continues_at_the_new_rate_and_records_it(tiny_models, tmp_path, monkeypatch):
    from inducer.app.experiment import run_one
    from inducer.data.task_source import TaskSource
    from inducer.training.config import TrainConfig
    from inducer.training.trainer import Trainer

    source = TaskSource("sst2", data_dir=task_dir("sst2"))
    config = TrainConfig(lr=5e-3, batch_size=8, max_length=32, max_steps=4, save_every=2, warmup_steps=0)
    run_one(str(tiny_models["bert"]), source, "lora", config, output_dir=tmp_path, progress=False)
    seen = []
    original_train = Trainer.train

    def spy(self, resume=False, new_schedule=False):
        result = original_train(self, resume, new_schedule)
        seen.append(self.scheduler.base_lrs)
        return result

    monkeypatch.setattr(Trainer, "train", spy)
    new = TrainConfig(lr=1e-3, batch_size=8, max_length=32, max_steps=6, save_every=2, warmup_steps=0)
    run_one(str(tiny_models["bert"]), source, "lora", new, output_dir=tmp_path, progress=False,
            resume=True, new_schedule=True)  # fmt: skip
    assert all(lr == 1e-3 for lr in seen[0])  # the new peak rate, not the checkpoint's 5e-3
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-3
    assert saved["schedule_changes"] == [{"lr": [5e-3, 1e-3], "max_steps": [4, 6]}]


def test_run_differences_ignore_options_that_change_no_weights():
    saved = {"model": "m", "train": {"lr": 1.0, "log_every": 10, "eval_batch_size": 8, "adam_betas": [0.9]}}
    new = {"model": "m", "train": {"lr": 1.0, "log_every": 1, "eval_batch_size": 64, "adam_betas": (0.9,)}}
    assert run_differences(saved, new) == []


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from inducer.training.run_folder import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_folder_in_use_by_another_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = rf"in use by another inducer process \(pid {holder.pid} on "
        with pytest.raises(RunFolderError, match=expected):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # released with its holder, even one killed
        with folder_lock(tmp_path):  # and re-entrant within a process (run_one, then its Trainer)
            pass


def test_two_trainings_on_one_folder_one_is_refused(tiny_models, tmp_path):
    # A real second process while the first trains: it is refused, and the first run completes.
    script = textwrap.dedent(
        f"""
        import sys
        from inducer.cli.main import app
        sys.argv = ["inducer", "train", "--model", {str(tiny_models["bert"])!r}, "--task", "sst2",
                    "--data-dir", {task_dir("sst2")!r}, "--method", "lora", "--output", {str(tmp_path)!r},
                    "--max-length", "32", "--batch-size", "8", "--quiet", "--max-steps", "40"]
        app()
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "config.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        result = _train(tiny_models["bert"], tmp_path, "--overwrite", expect=2)
        assert f"in use by another inducer process (pid {first.pid}" in result.output
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 40


def test_base_weights_hash_tells_weights_apart():
    from inducer.io.base_identity import base_weights_sha256

    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert base_weights_sha256(a) == base_weights_sha256(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert base_weights_sha256(a) != base_weights_sha256(b)


@pytest.mark.parametrize("failing_write", range(1, 11))  # a run makes 9 text writes
def test_a_crash_in_any_write_leaves_no_torn_run_file(tiny_models, tmp_path, monkeypatch, failing_write):
    # The n-th text write of a run dies half-way (a full disk, a kill): every JSON file of the run
    # folder is still whole (the old version or none), because each is written beside and renamed.
    import errno
    import pathlib

    from typer.testing import CliRunner

    from inducer.cli.main import app

    real_write_text = pathlib.Path.write_text
    calls = {"n": 0}

    def dying_write_text(self, text, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == failing_write:
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", dying_write_text)
    args = ["train", "--model", tiny_models["bert"], "--task", "sst2", "--data-dir", task_dir("sst2"),
            "--method", "lora", "--output", tmp_path, *FAST, "--save-every", "1",
            "--eval-every", "1"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code in (0, 2), result.output
    if calls["n"] >= failing_write:
        assert result.exit_code == 2 and "no space left" in result.output
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))  # whole, never half a file
