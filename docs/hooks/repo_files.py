"""MkDocs hook: the committed benchmark results (``benchmarks/results/``) and example configs
(``examples/``) join the site at their repository paths, so the results page links to the full tables
and figures exactly as the repository does, and a link to a missing one fails the strict build."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("benchmarks/results", "examples")


def on_files(files, config):
    """Add every file under ``FOLDERS`` (not in the navigation; Markdown rendered as pages)."""
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                uri = path.relative_to(ROOT).as_posix()
                files.append(File.generated(config, uri, abs_src_path=str(path),
                                            inclusion=InclusionLevel.NOT_IN_NAV))
    return files
