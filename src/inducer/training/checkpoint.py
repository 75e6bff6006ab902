"""The trainer checkpoint behind ``--resume``: a typed ``TrainState`` saved without pickle.

A checkpoint folder holds two files: ``trainer_state.<id>.safetensors`` with every tensor (trained
parameters, the best ones so far, the optimizer's moments, the torch RNG byte states) and
``trainer_state.json`` with the counters and the structure around those tensors. Nothing is ever
unpickled, so a crafted checkpoint cannot run code on ``--resume``; loading checks every field and
refuses anything unexpected with a one-line ``CheckpointError``.

Writing is crash-safe: the tensors go to a new file first, then ``trainer_state.json`` (naming that
file) replaces the previous one atomically, so a process killed mid-save keeps the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError  # noqa: F401 (defined in the error taxonomy, raised here)
from ..io.atomic import atomic_write, atomic_write_text, remove_stale_temporaries

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
LEGACY_STATE_FILE = "trainer_state.pt"  # pickled by inducer before the safetensors + JSON format
FORMAT = "inducer-trainer-state"
VERSION = 1
_TENSOR_FILE = re.compile(r"trainer_state\.[0-9a-f]{8,32}\.safetensors")
_FIELDS = {
    "format", "version", "tensors", "step", "epoch", "batch", "best", "best_step", "bad_evals",
    "history", "train_seconds", "processes", "trainable", "best_tensors", "optimizer", "scheduler", "rng",
}  # fmt: skip


@dataclass
class RngState:
    """One process's random number generators: Python's, numpy's, torch's CPU and CUDA ones."""

    python: tuple
    numpy: tuple
    torch: torch.Tensor
    cuda: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls) -> RngState:
        """The current state of every generator of this process."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        """Put every generator back in this state (CUDA's only where this machine has CUDA)."""
        try:
            random.setstate(self.python)
            np.random.set_state(self.numpy)
            torch.set_rng_state(self.torch)
        except (TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"the checkpoint's random generator state is invalid ({err})") from None
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class TrainState:
    """Where a training run stands: everything ``--resume`` needs to continue it exactly.

    ``batch`` is the position in epoch ``epoch``'s order of batches; ``best``/``best_step`` the best
    validation value of the select metric so far and its step; ``bad_evals`` the evaluations since it
    improved (early stopping's counter); ``rng`` one state per process.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    processes: int = 1
    rng: list[RngState] = field(default_factory=list)
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)
    best_tensors: dict[str, torch.Tensor] | None = None
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)


def save_train_state(folder: str | Path, state: TrainState) -> Path:
    """Write ``state`` into ``folder`` (created if needed); returns the path of its JSON file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": f"trainer_state.{secrets.token_hex(8)}.safetensors",
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "best": state.best,
        "best_step": state.best_step,
        "bad_evals": state.bad_evals,
        "history": state.history,
        "train_seconds": state.train_seconds,
        "processes": state.processes,
        "trainable": _put_tensors("trainable", state.trainable, tensors),
        "best_tensors": None
        if state.best_tensors is None
        else _put_tensors("best", state.best_tensors, tensors),
        "optimizer": _encode(state.optimizer, "optimizer", tensors),
        "scheduler": _encode(state.scheduler, "scheduler", tensors),
        "rng": [_encode_rng(rng, rank, tensors) for rank, rng in enumerate(state.rng)],
    }
    remove_stale_temporaries(folder, "trainer_state")  # a crashed save's leftovers
    atomic_write(folder / record["tensors"], lambda tmp: save_file(tensors, tmp))
    # The commit point: from here on the new tensors are the checkpoint.
    atomic_write_text(folder / STATE_FILE, json.dumps(record))
    for old in folder.glob("trainer_state.*.safetensors"):
        if old.name != record["tensors"]:
            old.unlink(missing_ok=True)
    return folder / STATE_FILE


def load_train_state(folder: str | Path) -> TrainState:
    """The state saved in ``folder``, every field checked; never unpickles anything."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        if (folder / LEGACY_STATE_FILE).is_file():
            raise CheckpointError(
                f"{folder / LEGACY_STATE_FILE} was written by an older inducer (a pickle) and cannot be "
                "resumed safely; train again without --resume"
            )
        raise FileNotFoundError(
            f"--resume: no checkpoint at {path}; train without --resume first (with --save-every N to "
            "checkpoint during training; --overwrite replaces a run that left none)"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a trainer checkpoint ({err}); train without --resume") from None
    _check(isinstance(record, dict) and set(record) == _FIELDS, path, "unexpected or missing fields")
    _check(record["format"] == FORMAT and record["version"] == VERSION, path, "unknown format or version")
    name = record["tensors"]
    _check(isinstance(name, str) and _TENSOR_FILE.fullmatch(name) is not None, path, "bad tensor file name")
    try:
        tensors = load_file(str(folder / name))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{folder / name} cannot be read ({err}); train without --resume") from None
    used: set[str] = set()
    state = TrainState(
        step=_count(record, "step", path),
        epoch=_count(record, "epoch", path),
        batch=_count(record, "batch", path),
        best=_number(record["best"], path, "best", optional=True),
        best_step=_count(record, "best_step", path),
        bad_evals=_count(record, "bad_evals", path),
        history=_history(record["history"], path),
        train_seconds=_number(record["train_seconds"], path, "train_seconds"),
        processes=_count(record, "processes", path),
        rng=[_decode_rng(item, tensors, used, path) for item in _list(record["rng"], path, "rng")],
        trainable=_take_tensors("trainable", record["trainable"], tensors, used, path),
        best_tensors=None
        if record["best_tensors"] is None
        else _take_tensors("best", record["best_tensors"], tensors, used, path),
        optimizer=_decode(record["optimizer"], tensors, used, path),
        scheduler=_decode(record["scheduler"], tensors, used, path),
    )
    _check(state.processes >= 1 and len(state.rng) == state.processes, path, "one RNG state per process")
    _check(used == set(tensors), folder / name, "tensors the JSON file does not name")
    return state


def restore_train_state(
    saved: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rank: int = 0,
    processes: int = 1,
) -> TrainState:
    """Put ``saved``'s trained tensors into ``model``, its state into ``optimizer`` and ``scheduler``,
    and process ``rank``'s RNG state into the generators; returns the counters (tensors dropped).

    Tensors that do not match ``model``'s trainable parameters (another model, method or size) are
    refused before anything is changed.
    """
    expected = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    for tensors in (saved.trainable, saved.best_tensors):
        if tensors is not None and {n: t.shape for n, t in tensors.items()} != expected:
            raise CheckpointError(
                "the checkpoint holds other trained tensors than this model's; resume with the same "
                "model, method and sizes, or train without --resume"
            )
    copy_into(model, saved.trainable)
    try:
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this run ({err})") from None
    if saved.processes != processes:
        logger.warning(
            "the checkpoint was written by %d process(es), this run has %d: the data order and "
            "the parameters continue exactly, the dropout random streams do not",
            saved.processes,
            processes,
        )
    saved.rng[rank if rank < len(saved.rng) else 0].restore()
    return dataclasses.replace(saved, trainable={}, optimizer={}, scheduler={}, rng=[])


def copy_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (by parameter name) into ``model``'s parameters, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


# -- encoding ---------------------------------------------------------------------------------------
# Optimizer and scheduler state dicts are nested dicts / lists / tuples of numbers, strings and
# tensors. JSON keeps everything but tensors (which become the name of a safetensors entry), tuples
# and non-string keys, so those three are tagged; decoding accepts nothing else.


def _encode(value, key: str, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot checkpoint a dict key of type {type(k).__name__} ({key})")
            items.append([k, _encode(v, f"{key}.{k}", tensors)])
        return {"dict": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} ({key}) without pickle")


def _decode(value, tensors: dict[str, torch.Tensor], used: set[str], path: Path):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors, used, path) for v in value]
    _check(isinstance(value, dict) and len(value) == 1, path, f"unexpected value {str(value)[:60]}")
    ((tag, inner),) = value.items()
    if tag == "tensor":
        return _tensor(inner, tensors, used, path)
    if tag == "tuple":
        return tuple(_decode(v, tensors, used, path) for v in _list(inner, path, "tuple"))
    if tag == "dict":
        out = {}
        for item in _list(inner, path, "dict"):
            ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
            _check(ok and not isinstance(item[0], bool), path, "bad dict entry")
            out[item[0]] = _decode(item[1], tensors, used, path)
        return out
    raise CheckpointError(f"{path} holds an unknown value tag {tag!r}; train without --resume")


def _put_tensors(prefix: str, named: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list:
    for name, tensor in named.items():
        tensors[f"{prefix}.{name}"] = tensor.detach().cpu().contiguous().clone()
    return list(named)


def _take_tensors(prefix: str, names, tensors: dict, used: set[str], path: Path) -> dict:
    names = _list(names, path, prefix)
    _check(all(isinstance(n, str) for n in names), path, f"{prefix} names must be strings")
    return {n: _tensor(f"{prefix}.{n}", tensors, used, path) for n in names}


def _encode_rng(rng: RngState, rank: int, tensors: dict[str, torch.Tensor]) -> dict:
    name, key, position, has_gauss, cached_gaussian = rng.numpy
    tensors[f"rng.{rank}.torch"] = rng.torch.clone()
    for i, state in enumerate(rng.cuda or []):
        tensors[f"rng.{rank}.cuda.{i}"] = state.clone()
    return {
        "python": [rng.python[0], list(rng.python[1]), rng.python[2]],
        "numpy": [name, [int(x) for x in key], int(position), int(has_gauss), float(cached_gaussian)],
        "torch": f"rng.{rank}.torch",
        "cuda": None if rng.cuda is None else [f"rng.{rank}.cuda.{i}" for i in range(len(rng.cuda))],
    }


def _decode_rng(item, tensors: dict, used: set[str], path: Path) -> RngState:
    ok = isinstance(item, dict) and set(item) == {"python", "numpy", "torch", "cuda"}
    _check(ok, path, "an RNG state needs python, numpy, torch and cuda")
    python, numpy_state = item["python"], item["numpy"]
    _check(isinstance(python, list) and len(python) == 3 and _ints(python[1]), path, "bad python RNG state")
    _check(isinstance(numpy_state, list) and len(numpy_state) == 5 and _ints(numpy_state[1]), path,
           "bad numpy RNG state")  # fmt: skip
    cuda = item["cuda"]
    return RngState(
        python=(python[0], tuple(python[1]), python[2]),
        numpy=(numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]),
        torch=_tensor(item["torch"], tensors, used, path),
        cuda=None if cuda is None else [_tensor(k, tensors, used, path) for k in _list(cuda, path, "cuda")],
    )


# -- validation -------------------------------------------------------------------------------------
def _check(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise CheckpointError(f"{path} is not a valid trainer checkpoint ({problem}); train without --resume")


def _tensor(key, tensors: dict, used: set[str], path: Path) -> torch.Tensor:
    _check(isinstance(key, str) and key in tensors, path, f"missing tensor {str(key)[:60]}")
    used.add(key)
    return tensors[key]


def _list(value, path: Path, what: str) -> list:
    _check(isinstance(value, list), path, f"{what} must be a list")
    return value


def _ints(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _count(record: dict, name: str, path: Path) -> int:
    value = record[name]
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, path, f"{name} >= 0")
    return value


def _number(value, path: Path, name: str, optional: bool = False) -> float | None:
    if optional and value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    _check(ok and not (name == "train_seconds" and (math.isnan(value) or value < 0)), path, f"bad {name}")
    return value


def _history(value, path: Path) -> list[dict]:
    # Any JSON value is plain data (nothing to execute); records need only be objects.
    _check(all(isinstance(r, dict) for r in _list(value, path, "history")), path, "history records")
    return value
