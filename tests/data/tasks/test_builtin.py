"""Every built-in task reads its tiny in-repo fixture (in the hub dataset's own format) offline."""

from __future__ import annotations

import pytest

from inducer.data.tasks import TASKS, TaskError, all_tasks, get_task, group_references, load_task

from ...tiny import task_dir

HUB_TASKS = ["sst2", "mnli", "webnlg", "e2e", "dart", "coqa", "cnn_dailymail", "xsum"]


def test_every_paper_task_is_registered_with_a_hub_id():
    tasks = all_tasks()
    for name in HUB_TASKS:
        assert tasks[name].hub and "/" in tasks[name].hub[0], name
    assert tasks["mnli"].num_labels == 3 and tasks["sst2"].num_labels == 2
    assert {"vader-movies", "vader-movies-rating", "e2e-synthetic"} <= set(TASKS)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_fixture_loads_into_normalised_splits(name):
    data = load_task(name, task_dir(name))
    assert {"train", "validation", "test"} <= set(data.splits)
    for split, dataset in data.splits.items():
        assert len(dataset) > 0, split
        if data.kind == "generation":
            assert set(dataset.column_names) == {"source", "targets"}
            assert all(isinstance(t, list) and t for t in dataset["targets"])
        else:
            assert {"text", "text_pair", "label"} <= set(dataset.column_names)
            assert all(0 <= label < data.num_labels for label in dataset["label"])


def test_glue_validation_is_held_out_of_train_and_test_is_glue_dev():
    data = load_task("sst2", task_dir("sst2"))
    train, validation = set(data.splits["train"]["text"]), set(data.splits["validation"]["text"])
    assert not train & validation
    assert all(text.endswith("indeed") for text in data.splits["test"]["text"])


def test_mnli_keeps_pairs_and_mismatched_split():
    data = load_task("mnli", task_dir("mnli"))
    row = data.splits["test_mismatched"][0]
    assert row["text_pair"] and row["text"] != row["text_pair"]


def test_data_to_text_preprocessing():
    webnlg = load_task("webnlg", task_dir("webnlg")).splits["test"][0]
    assert webnlg["source"] == "Ajoblanco : country : Spain"
    assert len(webnlg["targets"]) == 2
    dart = load_task("dart", task_dir("dart")).splits["validation"][0]
    assert dart["source"] == "Aarhus Airport : cityServed : Aarhus, Denmark"
    e2e = load_task("e2e", task_dir("e2e")).splits["test"]
    sources, references = group_references(e2e)
    assert all(2 <= len(refs) <= 3 for refs in references) and sources[0].startswith(
        "name["
    )  # duplicates merge


def test_coqa_one_example_per_turn_with_history():
    data = load_task("coqa", task_dir("coqa")).splits["test"]
    assert len(data) == 6
    second = data[1]
    assert "Q: What was the cat called ? A: Tom" in second["source"] and second["source"].endswith(
        "Q: Where did he live ?"
    )
    assert second["targets"] == ["in a red house"]
    assert get_task("coqa").truncate_source == "left"


def test_unknown_task_and_missing_split_are_clear():
    with pytest.raises(TaskError, match="unknown task 'glue'.*--train-file"):
        get_task("glue")
    with pytest.raises(TaskError, match="no test file"):
        load_task("e2e", task_dir("sst2"))


def test_missing_column_names_the_columns(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
    (tmp_path / "validation.jsonl").write_text('{"text": "a", "label": 1}\n')
    with pytest.raises(TaskError, match="lacks the column 'sentence'"):
        load_task("sst2", tmp_path)
