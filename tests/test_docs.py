"""The documentation site builds offline in strict mode (a broken link, a missing page or a bad
docstring reference fails), the API reference covers the public API, and the README stays short."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import inducer

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def test_the_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed: pip install -c requirements/lock.txt '.[docs]'")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d",
         str(tmp_path / "site")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    shown = set(re.findall(r'id="inducer\.[\w.]+\.(\w+)"', api))
    assert set(inducer.__all__) <= shown, sorted(set(inducer.__all__) - shown)


def test_the_api_reference_lists_every_public_name():
    entries = re.findall(r"^::: inducer\.[\w.]+\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert sorted(entries) == sorted(set(entries)), "a name is listed twice"
    assert set(entries) == set(inducer.__all__)


def test_the_readme_is_short_and_links_to_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", text):
        assert (ROOT / target).is_file(), target


def test_the_format_page_links_no_file_outside_the_repository():
    assert "shared/spec" not in (ROOT / "docs" / "format.md").read_text()
