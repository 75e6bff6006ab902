"""The learning-rate search of ``inducer compare``: the grid grows past an edge holding the best value."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inducer.app import compare
from inducer.app.compare import MAX_GRID_EXTENSIONS, next_lr

GRID = (3e-4, 1e-3, 3e-3)


def test_interior_best_needs_no_extension():
    assert next_lr({3e-4: 0.70, 1e-3: 0.80, 3e-3: 0.75}, GRID, "accuracy") is None


def test_best_at_the_top_edge_grows_upward_with_the_same_ratio():
    assert next_lr({3e-4: 0.70, 1e-3: 0.75, 3e-3: 0.80}, GRID, "accuracy") == 9e-3


def test_best_at_the_bottom_edge_grows_downward():
    assert next_lr({3e-4: 0.80, 1e-3: 0.75, 3e-3: 0.70}, GRID, "accuracy") == 9e-5


def test_lower_is_better_metrics_read_the_edge_the_other_way():
    assert next_lr({3e-4: 2.0, 1e-3: 2.5, 3e-3: 3.0}, GRID, "loss") == 9e-5


def test_a_tie_with_the_neighbour_is_not_an_edge():
    assert next_lr({3e-4: 0.80, 1e-3: 0.80, 3e-3: 0.70}, GRID, "accuracy") is None


def test_growth_stops_after_max_extensions():
    scores = {3e-4: 0.7, 1e-3: 0.75, 3e-3: 0.8}
    lr = 3e-3
    for _ in range(MAX_GRID_EXTENSIONS):
        lr = next_lr(scores, GRID, "accuracy")
        assert lr is not None and lr > max(scores)
        scores[lr] = max(scores.values()) + 0.01  # still improving: keep the best at the edge
    assert next_lr(scores, GRID, "accuracy") is None


def test_single_value_grid_is_not_extended():
    assert next_lr({1e-3: 0.8}, (1e-3,), "accuracy") is None


@pytest.mark.parametrize(
    ("curve", "expected_lrs", "expected_pick"),
    [
        # validation accuracy peaks at 1e-2: two values past the grid's top edge are tried
        (lambda lr: -abs(lr - 1e-2), [3e-4, 1e-3, 3e-3, 9e-3, 3e-2], 9e-3),
        (lambda lr: -abs(lr - 1e-3), [3e-4, 1e-3, 3e-3], 1e-3),
    ],
)
def test_pick_lr_extends_the_grid_until_the_pick_is_interior(monkeypatch, curve, expected_lrs, expected_pick):
    def fake_run_one(model, source, method, config, *args, **kwargs):
        return SimpleNamespace(best_validation=curve(config.lr), select_metric="accuracy")

    monkeypatch.setattr(compare, "run_one", fake_run_one)
    from inducer.training.config import TrainConfig

    lr, trials = compare.pick_lr("m", None, None, "lora", TrainConfig(), None, GRID, None, False)
    assert [t["lr"] for t in trials] == pytest.approx(expected_lrs)
    assert lr == pytest.approx(expected_pick)
    assert [t.get("extension", False) for t in trials] == [t["lr"] not in GRID for t in trials]
