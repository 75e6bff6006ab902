"""The installed package carries its recipes, and the command line starts without the deep-learning stack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from inducer.recipes import bundled

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "tensorboard")


def test_the_wheel_contains_every_bundled_recipe(tmp_path):
    # Built from a copy, so that setuptools' build/ folder does not land in the checkout.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", tmp_path, project],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("inducer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"inducer/recipes/{name}.yaml" for name in bundled()} <= names
    assert len(bundled()) >= 6


def _imported_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_importing_the_cli_loads_no_deep_learning_library():
    assert _imported_after("import inducer") == []  # the package's names load on first use (PEP 562)
    assert _imported_after("import inducer.cli") == []
