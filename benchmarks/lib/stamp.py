"""The environment stamp of a results file: machine, CPU, commit, versions, command line, date."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str) -> str | None:
    """Output of ``git ARGS`` in the repository, or None where git or the repository is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None where it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def command_line() -> str:
    """The command that started this process, as one would type it from the repository root."""
    return shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def environment() -> dict:
    """Machine, versions, date, exact command and commit, for the head of every results file.

    Others may edit ``src/`` while a benchmark runs, so an uncommitted ``src`` is recorded with
    the files it touches and a hash of its diff: the exact source this run imported.
    """
    import torch

    status = git("status", "--porcelain", "src")
    diff = git("diff", "HEAD", "--", "src") or ""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "peft": package_version("peft"),
        "inducer": package_version("inducer"),
        "git_commit": git("rev-parse", "HEAD"),
        "src_modified": None if status is None else bool(status),
        "src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest(),
        "src_diff_files": (git("diff", "HEAD", "--name-only", "--", "src") or "").split(),
    }
