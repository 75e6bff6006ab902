"""End-to-end tests of the ``inducer`` command line on tiny models and fixtures (offline)."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json

import pytest

from inducer.io.adapter_format import weights_path

from ..tiny import FIXTURES, run_cli, single_thread, task_dir, tiny_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = ["--max-length", "32", "--batch-size", "8", "--lr", "5e-3", "--quiet"]


@pytest.fixture(scope="module")
def sst2_run(tiny_models, tmp_path_factory):
    """One inducer training run on the SST-2 fixture, shared by the eval / generate tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sst2-run")
    result = run_cli(
        "train",
        "--model",
        tiny_models["bert"],
        "--task",
        "sst2",
        "--data-dir",
        task_dir("sst2"),
        "--method",
        "inducer",
        "--output",
        out,
        "--epochs",
        "2",
        "--eval-every",
        "3",
        *FAST,
    )
    torch.set_num_threads(before)
    return out, result.output


def test_train_writes_adapters_logs_and_results(sst2_run):
    out, output = sst2_run
    for name in ("best", "last"):
        assert weights_path(out / name).is_file()
        assert (out / name / "inducer_run.json").is_file()
    assert (out / "config.json").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} >= {"validation"}
    assert any((out / "tensorboard").iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "inducer" and "accuracy" in results["test"]["test"]
    assert "best validation accuracy" in output and "r_k=6, r_v=4" in output


def test_eval_reuses_the_training_run(sst2_run, tiny_models, tmp_path):
    out, _ = sst2_run
    target = tmp_path / "metrics.json"
    result = run_cli("eval", "--adapter", out / "best", "--split", "test", "--output", target, "--quiet")
    metrics = json.loads(target.read_text())["metrics"]
    saved = json.loads((out / "results.json").read_text())["test"]["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    assert "accuracy" in result.output


def test_generate_predicts_labels_for_classification(sst2_run):
    out, _ = sst2_run
    result = run_cli(
        "generate", "--adapter", out / "best", "--input", "a wonderful film", "--input", "dull", "-q"
    )
    assert result.output.count("positive") + result.output.count("negative") == 2


def test_generate_fits_the_input_limit_to_the_models_positions(sst2_run):
    out, _ = sst2_run
    long_input = " ".join(["wonderful"] * 400)  # longer than the tiny BERT's 128 positions
    args = ["--input", long_input, "--max-length", "1000", "-q"]
    result = run_cli("generate", "--adapter", out / "best", *args)
    assert result.output.count("positive") + result.output.count("negative") == 1


def test_sizes_with_budget_is_refused(tiny_models, tmp_path):
    args = ["train", "--model", tiny_models["bert"], "--task", "sst2", "--method", "inducer"]
    result = run_cli(*args, "--budget", "1%", "--sizes", "r_k=2", "--output", tmp_path, expect=2)
    assert "--budget and --sizes cannot be combined" in " ".join(result.output.split())


def test_resume_continues_from_the_checkpoint(tiny_models, tmp_path):
    args = [
        "train",
        "--model",
        tiny_models["bert"],
        "--task",
        "sst2",
        "--data-dir",
        task_dir("sst2"),
        "--method",
        "lora",
        "--output",
        tmp_path,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        *FAST,
    ]
    run_cli(*args)
    refused = run_cli(*args, "--resume", "--max-steps", "6", expect=2)
    assert "max_steps: 4 -> 6" in refused.output and "--new-schedule" in refused.output
    result = run_cli(*args, "--resume", "--max-steps", "6", "--new-schedule")
    assert "of 6" in result.output
    changes = json.loads((tmp_path / "config.json").read_text())["schedule_changes"]
    assert changes == [{"max_steps": [4, 6]}]  # the longer schedule is recorded, not hidden
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6


def test_generation_task_on_a_decoder_without_pad_token(tiny_models, tmp_path):
    run_cli(
        "train",
        "--model",
        tiny_models["gpt2"],
        "--task",
        "xsum",
        "--data-dir",
        task_dir("xsum"),
        "--method",
        "inducer+lora",
        "--output",
        tmp_path,
        "--max-steps",
        "3",
        "--max-new-tokens",
        "4",
        *FAST,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"rouge1", "rouge2", "rougeL", "perplexity"} <= set(results["test"]["test"])
    result = run_cli(
        "generate",
        "--adapter",
        tmp_path / "best",
        "--input",
        "the city council voted .",
        "--input",
        "name[The Eagle], eatType[pub]",  # printed as given, not read as console markup
        "--max-new-tokens",
        "3",
        "--num-beams",
        "2",
        "-q",
    )
    assert "the city council voted" in result.output and "name[The Eagle], eatType[pub]" in result.output


def test_local_files_with_string_labels_and_column_options(tiny_models, tmp_path):
    files = FIXTURES / "files"
    run_cli(
        "train",
        "--model",
        tiny_models["bert"],
        "--task",
        "classification",
        "--train-file",
        files / "sentiment.csv",
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--method",
        "bitfit",
        "--output",
        tmp_path,
        "--max-steps",
        "2",
        *FAST,
    )
    info = json.loads((tmp_path / "best" / "inducer_run.json").read_text())
    assert info["label_names"] == ["neg", "pos"]


def test_compare_writes_table_json_and_plot(tiny_models, tmp_path):
    result = run_cli(
        "compare",
        "--model",
        tiny_models["bert"],
        "--task",
        "regression",
        "--train-file",
        FIXTURES / "files" / "rating.jsonl",
        "--methods",
        "inducer,lora",
        "--budget",
        "2%",
        "--seeds",
        "2",
        "--output",
        tmp_path,
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
        "--max-length",
        "16",
        "-q",
    )
    table = (tmp_path / "results.md").read_text()
    assert "| inducer |" in table and "| lora |" in table and "±" in table
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["inducer", "lora"] and data["rows"][0]["seeds"] == 2
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert "pearson" in result.output


def test_compare_refuses_a_folder_holding_an_earlier_comparison(tiny_models, tmp_path):
    args = ["compare", "--model", tiny_models["bert"], "--task", "regression", "--train-file",
            FIXTURES / "files" / "rating.jsonl", "--methods", "lora", "--budget", "2%", "--output", tmp_path,
            "--max-steps", "1", "--lr", "1e-3", "--max-length", "16", "-q"]
    (tmp_path / "results.json").write_text("{}")
    refused = run_cli(*args, expect=2)
    assert "already holds files (results.json)" in refused.output and "--overwrite" in refused.output
    assert (tmp_path / "results.json").read_text() == "{}"  # untouched
    (tmp_path / "notes.txt").write_text("mine")
    refused = run_cli(*args, "--overwrite", expect=2)
    assert "does not write (notes.txt)" in refused.output and "nothing was removed" in refused.output
    (tmp_path / "notes.txt").unlink()
    run_cli(*args, "--overwrite")
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["method"] == "lora"


def test_compare_picks_the_learning_rate_on_validation(tiny_models, tmp_path, monkeypatch):
    from inducer.app import compare

    monkeypatch.setitem(compare.LR_GRIDS, "bitfit", (1e-4, 1e-2))
    run_cli(
        "compare",
        "--model",
        tiny_models["bert"],
        "--task",
        "sst2",
        "--data-dir",
        task_dir("sst2"),
        "--methods",
        "bitfit",
        "--output",
        tmp_path,
        "--max-steps",
        "2",
        "--max-length",
        "16",
        "-q",
    )
    data = json.loads((tmp_path / "results.json").read_text())
    assert [t["lr"] for t in data["lr_trials"]["bitfit"]] == [1e-4, 1e-2]
    assert data["rows"][0]["lr"] in (1e-4, 1e-2)


def test_info_lists_everything_and_counts_a_budget(tiny_models):
    listing = run_cli("info").output
    for word in ("inducer+lora", "vader-movies", "e2e-synthetic", "sst2", "minilm", "roberta-sst2"):
        assert word in listing
    counts = run_cli("info", "--model", tiny_models["bert"], "--method", "lora", "--budget", "2%").output
    assert "lora" in counts and "r=" in counts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--task", "sst3", "--method", "inducer"], "unknown task 'sst3'"),
        (["train", "--task", "sst2", "--method", "inducr"], "unknown method 'inducr'"),
        (
            ["train", "--task", "classification", "--train-file", "files/sentiment.csv", "--method", "lora"],
            "missing column(s) ['text', 'label']",
        ),
        (
            [
                "train",
                "--task",
                "classification",
                "--train-file",
                "files/bad_labels.jsonl",
                "--validation-file",
                "files/bad_labels_dev.jsonl",
                "--method",
                "lora",
            ],
            "outside 0..1",
        ),
        (
            ["train", "--task", "classification", "--train-file", "files/none.csv", "--method", "lora"],
            "does not exist",
        ),
        (["eval", "--adapter", "nowhere", "--task", "sst2"], "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_error(tiny_models, tmp_path, args, message):
    args = [str(FIXTURES / a) if a.startswith("files/") else a for a in args]
    extra = ["--data-dir", task_dir("sst2")] if "sst2" in args else []
    command = [*args, "--model", tiny_models["bert"], *extra]
    if args[0] == "train":
        command += ["--output", tmp_path, "-q"]
    result = run_cli(*command, expect=2)
    assert message in " ".join(result.output.split())


def test_recipe_with_unknown_key_is_refused(tiny_models, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: x\ntask: sst2\nmethods: [inducer]\ntraining: {lr: 1e-3, epoch: 3}\n")
    result = run_cli("train", "--recipe", recipe, "--output", tmp_path / "out", expect=2)
    assert "unknown option(s) ['epoch']" in result.output


def test_threads_option_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        run_cli("--threads", "1", "info")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_auto_threads_leaves_busy_cores_alone(monkeypatch):
    import os

    from inducer.app import demo

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, threads in ((1.2, 1), (0.1, 2), (7.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert demo.auto_threads() == threads
