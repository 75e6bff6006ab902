"""The --resume checkpoint: typed, round-trips exactly, never unpickles, refuses what it did not write."""

# ruff: noqa: F811  (pytest fixtures imported from .tiny are redefined as test arguments)

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from inducer.training.checkpoint import (
    LEGACY_STATE_FILE,
    STATE_FILE,
    CheckpointError,
    RngState,
    TrainState,
    load_train_state,
    save_train_state,
)

from ..tiny import single_thread, tiny_models  # noqa: F401
from .test_training import _trainer

pytestmark = pytest.mark.usefixtures("single_thread")


class _Payload:
    """Unpickling this touches a marker file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state() -> TrainState:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    return TrainState(
        step=7,
        epoch=1,
        batch=3,
        best=0.25,
        best_step=4,
        bad_evals=1,
        history=[{"step": 4, "split": "validation", "accuracy": 0.25}],
        train_seconds=1.5,
        processes=1,
        rng=[RngState.capture()],
        trainable=trained,
        best_tensors={n: t * 2 for n, t in trained.items()},
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
    )


def test_state_round_trips_exactly(tmp_path):
    state = _state()
    save_train_state(tmp_path, state)
    loaded = load_train_state(tmp_path)
    for name in ("step", "epoch", "batch", "best", "best_step", "bad_evals", "history", "train_seconds"):
        assert getattr(loaded, name) == getattr(state, name), name
    for a, b in ((loaded.trainable, state.trainable), (loaded.best_tensors, state.best_tensors)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.optimizer["param_groups"][0]["betas"] == (0.9, 0.98)  # a tuple again
    assert set(loaded.optimizer["state"]) == {0, 1}  # integer keys again
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], state.optimizer["state"][0]["exp_avg"])
    assert loaded.scheduler == state.scheduler
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    loaded.rng[0].restore()
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_saving_again_keeps_one_tensor_file(tmp_path):
    save_train_state(tmp_path, _state())
    save_train_state(tmp_path, _state())
    assert len(list(tmp_path.glob("trainer_state.*.safetensors"))) == 1
    assert load_train_state(tmp_path).step == 7


def test_old_pickled_checkpoint_is_refused_unread(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / LEGACY_STATE_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="older inducer.*cannot be resumed safely"):
        load_train_state(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["json", "tensors"])
def test_pickle_in_place_of_the_new_files_is_refused_unread(tmp_path, target):
    marker = tmp_path / "executed"
    save_train_state(tmp_path, _state())
    payload = pickle.dumps(_Payload(str(marker)))
    if target == "json":
        path = tmp_path / STATE_FILE
    else:
        path = tmp_path / json.loads((tmp_path / STATE_FILE).read_text())["tensors"]
    path.write_bytes(payload)
    with pytest.raises(CheckpointError) as error:
        load_train_state(tmp_path)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def _edit(tmp_path, change) -> None:
    path = tmp_path / STATE_FILE
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(extra=1),
        lambda r: r.pop("step"),
        lambda r: r.update(step=-1),
        lambda r: r.update(step="7"),
        lambda r: r.update(best="high"),
        lambda r: r.update(version=99),
        lambda r: r.update(tensors="../../etc/passwd"),
        lambda r: r.update(optimizer={"pickle": "gASV"}),
        lambda r: r.update(history=[1, 2]),
        lambda r: r.update(processes=2),
        lambda r: r["trainable"].append("missing.weight"),
        lambda r: r.update(best_tensors=None),  # its tensors are then unexpected in the file
    ],
)
def test_unexpected_content_is_refused_in_one_line(tmp_path, change):
    save_train_state(tmp_path, _state())
    _edit(tmp_path, change)
    with pytest.raises(CheckpointError) as error:
        load_train_state(tmp_path)
    assert "\n" not in str(error.value) and "--resume" in str(error.value)


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save-every"):
        load_train_state(tmp_path)


def test_trainer_refuses_an_old_checkpoint_on_resume(tiny_models, tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / LEGACY_STATE_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="older inducer"):
        _trainer(tiny_models, tmp_path).train(resume=True)
    assert not marker.exists()
    assert not os.path.exists(tmp_path / "checkpoint" / STATE_FILE)


def test_trainer_refuses_a_checkpoint_of_another_method(tiny_models, tmp_path):
    _trainer(tiny_models, tmp_path, method="lora", max_steps=2, save_every=2).train()
    with pytest.raises(CheckpointError, match="same model, method and sizes"):
        _trainer(tiny_models, tmp_path, method="inducer", max_steps=4).train(resume=True)
