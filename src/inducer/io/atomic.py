"""Writes a crash cannot tear: a temporary file beside the target, flushed to disk, then one rename.

A reader sees the old file or the new one, never a mix; a crashed writer leaves at most a hidden
temporary file (``.<name>.<random>.tmp``), which :func:`remove_stale_temporaries` clears on the next write.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to disk, where the OS allows it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temporary(path: Path, write: Callable[[str], None]) -> str:
    """Write a file through ``write(tmp_path)`` to a unique temporary name beside ``path``, flush it to
    disk and return the name (the caller renames it into place). The temporary is removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared files unreadable
        fsync_path(tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` atomically through ``write(tmp_path)``: a temporary file, then a rename."""
    path = Path(path)
    os.replace(write_temporary(path, write), path)
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temporaries(directory: Path, name: str) -> None:
    """Remove temporaries of ``name`` that a crashed write left in ``directory``."""
    for stale in directory.glob(f".{name}.*{TEMPORARY_SUFFIX}"):
        try:
            stale.unlink()
        except OSError:
            pass
