"""Every error a user can cause is one line naming the problem and the fix (exit 2); a bug of ours
prints its traceback and asks for a report (exit 1)."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import errno

import pytest

from inducer.cli.errors import explain

from ..tiny import run_cli, single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _train(model, out, expect):
    args = ["train", "--model", model, "--task", "sst2", "--data-dir", task_dir("sst2"), "--method", "lora"]
    fast = ["--max-length", "32", "--batch-size", "8", "--max-steps", "1", "--quiet"]
    return run_cli(*args, "--output", out, *fast, expect=expect)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_an_output_path_that_is_a_file_is_one_line(tiny_models, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    line = _one_error_line(_train(tiny_models["bert"], target, expect=2).output)
    assert "results.txt" in line and "is a file where a folder is needed" in line


def test_a_full_disk_is_one_line(tiny_models, tmp_path, monkeypatch):
    from inducer.app import experiment

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(experiment, "atomic_write_text", full)
    line = _one_error_line(_train(tiny_models["bert"], tmp_path / "run", expect=2).output)
    assert "no space left" in line and "config.json" in line


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/mnt/out/best"), "read-only; choose a folder"),
        (PermissionError(errno.EACCES, "Permission denied", "/out"), "permission denied; choose a folder"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/x"), "no space left"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/out/f"), "is a file where a folder"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data.csv"), "no such file"),
        (EOFError(), "ended unexpectedly"),
        (OSError("x is not a local folder and is not a valid model identifier"), "valid model identifier"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "lower --batch-size"),
    ],
)
def test_user_errors_are_explained_in_one_line(error, expected):
    message, code = explain(error)
    assert expected in message and "\n" not in message and code == 2


def test_datasets_generation_errors_are_one_line_with_the_cause():
    from datasets.exceptions import DatasetGenerationError

    try:
        try:
            raise ValueError("Couldn't cast\nline 3 of train.csv")
        except ValueError as cause:
            raise DatasetGenerationError("An error occurred while generating the dataset") from cause
    except DatasetGenerationError as err:
        message, code = explain(err)
    assert "line 3 of train.csv" in message and "\n" not in message and code == 2


@pytest.mark.parametrize("error", [KeyError("weight"), RuntimeError("shape mismatch"), TypeError("None"),
                                   ValueError("a bug of ours that happens to be a ValueError")])
def test_a_bug_of_ours_shows_the_traceback_and_asks_for_a_report(tiny_models, tmp_path, monkeypatch, error):
    from inducer.app import experiment

    def broken(spec):
        raise error

    monkeypatch.setattr(experiment, "train_run", broken)
    result = _train(tiny_models["bert"], tmp_path, expect=1)
    assert "Traceback (most recent call last)" in result.output
    assert "in broken" in result.output and "please report it" in result.output
    assert explain(error) is None


def test_eof_is_not_just_aborted(tiny_models, tmp_path, monkeypatch):
    from inducer.app import experiment

    def truncated(spec):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(experiment, "train_run", truncated)
    line = _one_error_line(_train(tiny_models["bert"], tmp_path, expect=2).output)
    assert "Ran out of input" in line and "check that it is complete" in line


def _every_user_error_class():
    from inducer import errors

    found, todo = [], [errors.UserError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_class_of_the_taxonomy_is_one_line_and_exit_2():
    classes = _every_user_error_class()
    assert len(classes) >= 12  # UserError, ConfigError, UsageError, AdapterFormatError, TaskError, ...
    for cls in classes:
        message, code = explain(cls("a problem\n  and what to do"))
        assert code == 2 and message == "a problem and what to do", cls


def test_the_library_raises_user_errors_for_user_mistakes():
    import inducer
    from inducer.errors import ConfigError, UsageError, UserError

    from ..conftest import make_model

    with pytest.raises(ConfigError):
        inducer.LoRAConfig(r=2, dropout=1.5)
    with pytest.raises(UsageError):
        inducer.detach(make_model("bert"))
    with pytest.raises(UserError):
        inducer.preset("lorra", make_model("bert"))
    with pytest.raises(UsageError):
        inducer.set_adapter(inducer.attach(make_model("bert"), inducer.LoRAConfig(r=2)), "nope")
