"""Every code block of the README and the docs runs: Python blocks per page, in order, in one fresh
process and a fresh temporary folder; shell blocks per page, in order, in a fresh folder, with an
``inducer`` command that runs this checkout.

Markers, an HTML comment on the line before a block's fence:

* ``<!-- skip: REASON -->``: not run here, for the reason given (the hub, a GPU, a long-running server);
* ``<!-- slow -->``: run only by ``make test-slow`` (``pytest -m slow``): minutes on a CPU;
* ``<!-- install -->``: the README's install section, run by ``tests/test_packaging.py``'s fresh venv;
* ``<!-- extra: NAME -->``: needs that extra (``make test`` has them all, so it runs here); the
  fresh-venv test, which installs what the install section's first line does, leaves it out.

Blocks in other languages (text, mermaid, YAML) are not code to run. ``python tests/test_doc_examples.py``
prints each block's status with its reason.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LANGUAGES = {"python": "python", "bash": "shell"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(skip|slow|install|extra)\s*:?\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block: its page, line, kind (python / shell / other) and marker."""

    page: Path
    line: int
    kind: str
    code: str
    marker: str | None = None  # skip / slow / install / extra
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, with the marker on the line before each."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        kind = RUN_LANGUAGES.get(fence.group(1), "other")
        found.append(Block(page, i + 1, kind, "\n".join(lines[i + 1:end]) + "\n",
                           marker.group(1) if marker else None, marker.group(2) if marker else ""))
        i = end + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def _env(tmp_path: Path) -> dict[str, str]:
    """This checkout's package first, one thread, no hub, and an ``inducer`` command running it."""
    shims = tmp_path / ".bin"
    shims.mkdir(exist_ok=True)
    command = shims / "inducer"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m inducer --threads 1 "$@"\n')
    command.chmod(command.stat().st_mode | stat.S_IEXEC)
    path = f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}"  # accelerate from this venv
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path,
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run_page(page: Path, kind: str, selected: list[Block], tmp_path: Path) -> None:
    if not selected:
        pytest.skip(f"no {kind} block of {page.name} runs here")
    work = tmp_path / "work"
    work.mkdir()
    if kind == "python":
        source = "import torch\ntorch.set_num_threads(1)\n" + "\n".join(
            f"# --- {b.where}\n{b.code}" for b in selected)
        argv = [sys.executable, "-c", source]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", "\n".join(b.code for b in selected)]
    out = subprocess.run(argv, cwd=work, env=_env(tmp_path), capture_output=True, text=True, check=False,
                         timeout=1500)
    assert out.returncode == 0, f"{[b.where for b in selected]}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"


def _cases(kind: str, slow: bool):
    for page in PAGES:
        chosen = [b for b in ALL if b.page == page and b.kind == kind and
                  (b.marker == "slow") == slow and b.marker not in ("skip", "install")]
        if chosen:
            yield pytest.param(page, chosen, id=str(page.relative_to(ROOT)))


@pytest.mark.parametrize("page, selected", list(_cases("python", slow=False)))
def test_python_blocks_run(page, selected, tmp_path):
    _run_page(page, "python", selected, tmp_path)


@pytest.mark.parametrize("page, selected", list(_cases("shell", slow=False)))
def test_shell_blocks_run(page, selected, tmp_path):
    _run_page(page, "shell", selected, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page, selected", [*_cases("python", slow=True), *_cases("shell", slow=True)])
def test_slow_blocks_run(page, selected, tmp_path):
    _run_page(page, selected[0].kind, selected, tmp_path)


def test_every_block_is_run_or_says_why_not():
    for b in ALL:
        if b.kind == "other":
            continue
        assert b.marker != "skip" or b.reason, f"{b.where}: a skip needs a reason"
        assert b.marker != "install" or b.page.name == "README.md", b.where
    # Python examples use no undefined API key and no hub model without saying so.
    assert sum(b.kind != "other" and b.marker is None for b in ALL) >= 8


def summary() -> str:
    """How many blocks run where, and each skipped one's reason."""
    rows = [b for b in ALL if b.kind != "other"]
    count = {m: sum(b.marker == m for b in rows) for m in (None, "extra", "slow", "install", "skip")}
    lines = [f"{len(rows)} code blocks: {count[None] + count['extra']} run by make test "
             f"({count['extra']} of them need an extra), {count['slow']} by make test-slow, "
             f"{count['install']} by the fresh-venv install test, {count['skip']} skipped"]
    lines += [f"  skipped {b.where} ({b.kind}): {b.reason}" for b in rows if b.marker == "skip"]
    lines += [f"  not code: {b.where}" for b in ALL if b.kind == "other"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())
