"""The built-in offline data: vader-movies (from a stand-in sdist, no network) and e2e-synthetic."""

from __future__ import annotations

import io
import tarfile

import pytest

from inducer.data.tasks import e2e_synthetic, load_task, vader

ROWS = [
    (i, rating, f"sentence {i}")
    for i, rating in [(1, 2.5), (2, -1.0), (3, 0.0), (10, 3.0), (11, -2.2), (20, -0.5), (21, 1.1), (22, 0.7)]
]


def _fake_sdist(folder):
    """A tarball shaped like vaderSentiment-3.3.2.tar.gz: an inner archive with the ground-truth file."""
    text = "".join(f"{i}\t{r}\t{t}\r\n" for i, r, t in ROWS).encode()
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        info = tarfile.TarInfo("hutto_ICWSM_2014/" + vader.MEMBER)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    outer_path = folder / "vader" / vader.SDIST
    outer_path.parent.mkdir(parents=True)
    with tarfile.open(outer_path, "w:gz") as tar:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))


def test_vader_extracts_parses_and_splits_by_id(tmp_path, monkeypatch):
    _fake_sdist(tmp_path)
    monkeypatch.setenv("INDUCER_CACHE", str(tmp_path))
    data = load_task("vader-movies")
    assert sorted(data.splits["test"]["text"]) == ["sentence 10", "sentence 20"]
    assert sorted(data.splits["validation"]["text"]) == ["sentence 1", "sentence 11", "sentence 21"]
    assert sorted(data.splits["train"]["text"]) == ["sentence 2", "sentence 22"]  # 3 is neutral: dropped
    assert (
        dict(zip(data.splits["train"]["text"], data.splits["train"]["label"], strict=True))["sentence 2"] == 0
    )
    rating = load_task("vader-movies-rating")
    assert sorted(rating.splits["train"]["label"]) == [-1.0, 0.0, 0.7]


def test_vader_fetch_failure_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("INDUCER_CACHE", str(tmp_path))

    def no_network(folder):
        raise vader.TaskError(f"could not fetch {vader.PACKAGE}; pip download ... into {folder}")

    monkeypatch.setattr(vader, "_download_sdist", no_network)
    with pytest.raises(vader.TaskError, match="pip download"):
        load_task("vader-movies")


def test_e2e_synthetic_is_deterministic_with_documented_sizes():
    raw = e2e_synthetic.load_raw()
    assert {k: len(v) for k, v in raw.items()} == {k: 3 * n for k, n in e2e_synthetic.SIZES.items()}
    assert e2e_synthetic.generate("train", 5) == e2e_synthetic.generate("train", 5)
    test_names = {r["meaning_representation"].split("]")[0] for r in e2e_synthetic.generate("test", 60)}
    train_names = {r["meaning_representation"].split("]")[0] for r in e2e_synthetic.generate("train", 600)}
    assert not test_names & train_names
    data = load_task("e2e-synthetic")
    sources, references = data.splits["test"]["source"], data.splits["test"]["targets"]
    assert sources[0].startswith("name[") and len(references[0]) == 1
