"""One owner per output folder: an exclusive lock, a refusal to mix runs, and ``--resume``'s checks.

``claim_run_folder`` is what ``train_run`` / ``run_one`` do before writing anything: take the
folder's lock (a second process on the same ``--output`` is refused with a line naming the holder's
pid, host and start time), then

- a new run needs an empty folder, or ``overwrite`` (the files of the old run are removed first;
  files inducer did not write are never removed: the claim is refused instead);
- ``resume`` needs the folder of the same run: its saved ``config.json`` must match the new one
  (base model and its weights, task, method and sizes, training options); every difference is listed
  and refused before any file is rewritten.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunFolderError  # noqa: F401 (defined in the error taxonomy, raised here)
from ..io.atomic import TEMPORARY_SUFFIX
from .run_records import RunRecord

LOCK_FILE = ".inducer.lock"
CONFIG_FILE = "config.json"
# What a training run writes into its folder (anything else there is the user's, never removed).
RUN_ENTRIES = {
    "best", "last", "checkpoint", CONFIG_FILE, "results.json", "metrics.jsonl", "tensorboard", LOCK_FILE,
}  # fmt: skip
# Training options that change neither the trained weights nor how they are selected: a resumed run
# may give new values.
RESUMABLE_CHANGES = {"eval_batch_size", "log_every", "save_every"}
# The learning-rate schedule's options: a resume accepts new values only when asked (new_schedule).
SCHEDULE_OPTIONS = {"lr", "max_steps", "epochs", "warmup_steps", "warmup_ratio"}
SCHEDULE_CHANGES = "schedule_changes"  # config.json's record of the schedules a resumed run switched to
_held: dict[Path, int] = {}  # folders this process has locked -> nesting depth (run_one, then Trainer)


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block; re-entrant within one
    process. Another process holding it is refused with a ``RunFolderError`` naming it."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(
                f"{folder} is in use by another inducer process ({_holder(path)}); wait for it to "
                "finish or choose another --output"
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        _held[folder] = 1
        try:
            yield
        finally:
            del _held[folder]
            os.ftruncate(fd, 0)  # the lock is released with the descriptor; the file stays (harmless)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def prepare_run_folder(
    folder: str | Path, record: RunRecord, resume: bool, overwrite: bool, new_schedule: bool = False
) -> None:
    """Check (and with ``overwrite`` clear) ``folder`` for a run described by ``record`` (its
    ``config.json``); the caller holds :func:`folder_lock`. Raises ``RunFolderError``.

    With ``resume`` and ``new_schedule``, new values of the schedule's options are accepted and
    recorded in ``record.schedule_changes`` (the saved changes, then this one: options and old/new).
    A saved record of an earlier version is compared in today's form (``knobs`` read as ``sizes``).
    """
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one of them")
    if new_schedule and not resume:
        raise RunFolderError("--new-schedule changes a resumed run's schedule; give it with --resume")
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if resume:
        saved_path = folder / CONFIG_FILE
        if not saved_path.is_file():
            raise RunFolderError(
                f"--resume: {folder} holds no run to continue (no {CONFIG_FILE}); train without --resume"
            )
        try:
            saved = RunRecord.read(folder, CONFIG_FILE).to_json()
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            message = f"--resume: {saved_path} is damaged ({err}); start again with --overwrite"
            raise RunFolderError(message) from None
        info = record.to_json()
        accepted = SCHEDULE_OPTIONS if new_schedule else set()
        differences = run_differences(saved, info, accepted)
        if differences:
            schedule = [d for d in differences if d.split(":")[0] in SCHEDULE_OPTIONS]
            hint = " (or --new-schedule to continue with the new learning-rate schedule)" if schedule else ""
            raise RunFolderError(
                f"--resume: {folder} is another run ({'; '.join(differences)}); resume with the same "
                f"settings{hint}, or train into another --output (or with --overwrite)"
            )
        changes = list(saved.get(SCHEDULE_CHANGES) or [])
        old, new = saved.get("train") or {}, info.get("train") or {}
        changed = {k: [old.get(k), new.get(k)] for k in sorted(accepted) if old.get(k) != new.get(k)}
        if changed:
            changes.append(changed)
        record.schedule_changes = changes
        return
    if not entries:
        return
    if not overwrite:
        raise RunFolderError(
            f"{folder} already holds files ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); "
            "continue that run with --resume, replace it with --overwrite, or choose another --output"
        )
    foreign = [name for name in entries if name not in RUN_ENTRIES and not name.endswith(TEMPORARY_SUFFIX)]
    if foreign:
        raise RunFolderError(
            f"--overwrite: {folder} holds files inducer did not write ({', '.join(foreign[:4])}); "
            "nothing was removed: move them away or choose another --output"
        )
    for name in entries:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def run_differences(saved: dict, new: dict, accepted: set[str] = frozenset()) -> list[str]:
    """What differs between two runs' ``config.json`` contents that a resume cannot accept, as
    ``'key: saved -> new'`` lines (training options one by one; those in ``accepted`` may differ).
    The record format's version is no difference: an earlier run's record is read in today's form."""
    differences = []
    for key in sorted((set(saved) | set(new)) - {"train", SCHEDULE_CHANGES, "version"}):
        if saved.get(key) != new.get(key):
            differences.append(f"{key}: {_short(saved.get(key))} -> {_short(new.get(key))}")
    saved_train, new_train = saved.get("train") or {}, new.get("train") or {}
    for key in sorted((set(saved_train) | set(new_train)) - RESUMABLE_CHANGES - accepted):
        if _plain(saved_train.get(key)) != _plain(new_train.get(key)):
            differences.append(f"{key}: {saved_train.get(key)!r} -> {new_train.get(key)!r}")
    return differences


def _plain(value):
    return list(value) if isinstance(value, tuple) else value  # JSON stores tuples as lists


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."

