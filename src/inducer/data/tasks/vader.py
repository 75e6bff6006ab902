"""``vader-movies``: 10,568 human-rated Rotten Tomatoes sentences, offline.

The sdist of ``vaderSentiment==3.3.2`` (not its wheel) ships Hutto & Gilbert's ICWSM 2014 ratings:
``movieReviewSnippets_GroundTruth.txt`` holds 10,605 sentences (the ones SST, and so GLUE SST-2, is
built from), each with the mean of human ratings in [-4, 4]. On first use the sdist is fetched with
``pip download`` into ``$INDUCER_CACHE/vader`` (default ``~/.cache/inducer``) and the file extracted.

* ``vader-movies`` (classification): label 1 if the rating is > 0, 0 if < 0; the 37 zero-rated
  sentences are dropped (5,242 positive, 5,326 negative).
* ``vader-movies-rating`` (regression): the rating itself.

The split is fixed by sentence id (no randomness): ``id % 10 == 0`` is test, ``id % 10 == 1`` is
validation, the rest is train: 8,457 / 1,057 / 1,054 sentences for the binary task (80 / 10 / 10 %).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ...io.cache import cache_root
from .base import TaskError

logger = logging.getLogger(__name__)
PACKAGE = "vaderSentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
MEMBER = "movieReviewSnippets_GroundTruth.txt"


def _download_sdist(folder: Path) -> Path:
    """Fetch the sdist with pip (the package index is the one source this needs)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        PACKAGE,
        "-d",
        str(folder),
        "--quiet",
    ]
    logger.info("fetching %s: %s", PACKAGE, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    path = folder / SDIST
    if result.returncode != 0 or not path.is_file():
        raise TaskError(
            f"could not fetch {PACKAGE} for vader-movies ({result.stderr.strip()[-400:]}). "
            f"Download it by hand with `pip download --no-deps --no-binary :all: {PACKAGE}` and "
            f"put {SDIST} in {folder}"
        )
    return path


def ground_truth_file(cache: Path | None = None) -> Path:
    """The extracted ``movieReviewSnippets_GroundTruth.txt``, fetched and extracted on first use."""
    folder = (cache or cache_root()) / "vader"
    target = folder / MEMBER
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / SDIST
    if not sdist.is_file():
        sdist = _download_sdist(folder)
    with tarfile.open(sdist) as outer:
        inner_member = next(
            (m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None
        )
        if inner_member is None:
            raise TaskError(f"{sdist} has no hutto_ICWSM_2014.tar.gz; is it the {PACKAGE} sdist?")
        inner_bytes = outer.extractfile(inner_member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith(MEMBER)), None)
        if member is None:
            raise TaskError(f"{sdist}: the ICWSM archive has no {MEMBER}")
        data = inner.extractfile(member).read()
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    return target


def parse(path: Path) -> list[dict]:
    """Rows ``{id, rating, text}`` of a tab-separated ``*_GroundTruth.txt`` file (UTF-8, CRLF)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        rows.append({"id": int(parts[0]), "rating": float(parts[1]), "text": "\t".join(parts[2:]).strip()})
    return rows


def split_of(sentence_id: int) -> str:
    """The fixed split of a sentence: test for id % 10 == 0, validation for 1, train otherwise."""
    return {0: "test", 1: "validation"}.get(sentence_id % 10, "train")


def load_raw(cache: Path | None = None):
    """The raw splits (columns ``id``, ``rating``, ``text``) as a ``datasets.DatasetDict``."""
    import datasets

    rows = parse(ground_truth_file(cache))
    by_split: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        by_split[split_of(row["id"])].append(row)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(items) for name, items in by_split.items()})


def binary(row: dict) -> list[dict]:
    """Positive (1) / negative (0) by the sign of the rating; neutral sentences dropped."""
    if row["rating"] == 0:
        return []
    return [{"text": row["text"], "text_pair": None, "label": int(row["rating"] > 0)}]


def rating(row: dict) -> list[dict]:
    """The mean human rating as a regression target."""
    return [{"text": row["text"], "text_pair": None, "label": float(row["rating"])}]
