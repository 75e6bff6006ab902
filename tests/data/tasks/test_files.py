"""Tasks from local csv / tsv / json / jsonl files."""

from __future__ import annotations

import pytest

from inducer.data.tasks import Columns, TaskError, load_files

from ...tiny import FIXTURES

FILES = FIXTURES / "files"


def test_csv_with_string_labels_and_heldout_validation():
    data = load_files(
        "classification", str(FILES / "sentiment.csv"), columns=Columns(text="review", label="sentiment")
    )
    assert data.label_names == ("neg", "pos")
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 32
    assert data.splits["test"] is data.splits["validation"]


def test_tsv_pairs_with_int_labels():
    data = load_files(
        "classification", str(FILES / "pairs.tsv"), columns=Columns(text="premise", text_pair="hypothesis")
    )
    assert data.num_labels == 3 and data.splits["train"][0]["text_pair"]


def test_regression_and_generation_files():
    assert load_files("regression", str(FILES / "rating.jsonl")).num_labels == 1
    generation = load_files("generation", str(FILES / "generation.jsonl"))
    assert generation.splits["train"][0]["targets"]


def test_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(TaskError, match=r"missing column\(s\) \['text'\].*--text-column"):
        load_files("classification", str(FILES / "sentiment.csv"), columns=Columns(label="sentiment"))
    with pytest.raises(TaskError, match=r"labels \[7\] are outside 0..1"):
        load_files("classification", str(FILES / "bad_labels.jsonl"), str(FILES / "bad_labels_dev.jsonl"))
    with pytest.raises(TaskError, match="give at least --train-file"):
        load_files("classification", None)
    with pytest.raises(TaskError, match="one of"):
        load_files("ranking", str(FILES / "rating.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "a", "label": null}\n{"text": "b", "label": null}\n')
    with pytest.raises(TaskError, match="empty"):
        load_files("regression", str(FILES / "rating.jsonl"), str(empty))
    unknown = tmp_path / "dev.csv"
    unknown.write_text("review,sentiment\nfine,meh\n")
    with pytest.raises(TaskError, match="'meh' does not occur in the train file"):
        load_files(
            "classification",
            str(FILES / "sentiment.csv"),
            str(unknown),
            columns=Columns("review", None, "sentiment"),
        )


@pytest.mark.parametrize(
    "content, name", [("", "empty.jsonl"), ("text,label\n", "header_only.csv"), ("\n\n", "blank.csv")]
)
def test_a_file_without_rows_is_refused_by_name(tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TaskError, match=f"{name}' has no rows"):
        load_files("classification", str(path))


def test_a_generation_file_without_its_target_column_names_the_option(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"source": "name[Aromi]", "reference": "Aromi is a cafe."}\n' * 4)
    with pytest.raises(TaskError, match=r"missing column\(s\) \['target'\].*--target-column"):
        load_files("generation", str(path))


# Careless files: each problem is a clear error naming the file and row/line, or a counted warning.

def _write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def test_string_labels_in_a_column_named_label_are_class_names(tmp_path):
    path = _write(tmp_path, "s.csv", "text,label\ngood,pos\nbad,neg\nok,pos\nmeh,neg\n")
    data = load_files("classification", path, holdout=1)
    assert data.label_names == ("neg", "pos")
    assert set(data.splits["train"]["label"]) <= {0, 1}


def test_an_empty_text_cell_is_an_error_not_the_text_none(tmp_path):
    path = _write(tmp_path, "e.csv", "text,label\ngood,1\n,0\nok,1\n")
    with pytest.raises(TaskError, match=r"e.csv: row 2: the 'text' cell is empty"):
        load_files("classification", path, holdout=1)


def test_rows_without_a_label_are_dropped_and_counted(tmp_path, caplog):
    path = _write(tmp_path, "r.csv", "text,label\ngood,1.5\nbad,\nok,2\nmeh,3\n")
    with caplog.at_level("WARNING"):
        data = load_files("regression", path, holdout=1)
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 3
    assert "dropped 1 of 4 rows with an empty 'label' cell" in caplog.text


@pytest.mark.parametrize("name,data,match", [
    ("m.jsonl", '{"text": "a", "label": 1}\n{"text": broken\n', r"m.jsonl:2: not a valid JSON row"),
    ("k.jsonl", '{"text": "a", "text": "b", "label": 1}\n', r"k.jsonl:1: .*duplicate key"),
    ("n.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', r"n.jsonl:2: a row must be a JSON object"),
    ("u.csv", b"text,label\n\xff\xfe bad,0\nok,1\n", r"u.csv:2: bytes that are not UTF-8"),
    ("d.csv", "text,text,label\na,b,0\nc,d,1\n", r"d.csv:1: duplicate column name\(s\) \['text'\]"),
    ("d.tsv", "label\tlabel\n0\t1\n", r"d.tsv:1: duplicate column"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, name, data, match):
    with pytest.raises(TaskError, match=match):
        load_files("classification", _write(tmp_path, name, data), holdout=1)
