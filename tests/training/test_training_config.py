"""TrainConfig: every option is checked with an error naming it, and every option has its help text."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from inducer.training.config import TrainConfig


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_steps", 0),
        ("max_steps", -3),
        ("max_steps", 2.5),
        ("patience", 0),
        ("eval_every", 0),
        ("save_every", 0),
        ("label_smoothing", -0.1),
        ("label_smoothing", 1.0),
        ("warmup_ratio", -0.01),
        ("warmup_ratio", 1.0),
        ("warmup_steps", -1),
        ("weight_decay", -0.1),
        ("max_train_examples", 0),
        ("max_eval_examples", 0),
        ("epochs", 0),
        ("epochs", -1.0),
        ("adam_betas", (0.9, 1.0)),
        ("adam_betas", (-0.1, 0.999)),
        ("adam_betas", (0.9,)),
        ("adam_eps", 0.0),
        ("max_grad_norm", 0.0),
        ("max_grad_norm", -1.0),
        ("num_beams", 0),
        ("max_new_tokens", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("precision", "fp8"),
    ],
)
def test_bad_option_is_one_line_naming_it(name, value):
    with pytest.raises(ValueError, match=name) as error:
        TrainConfig(**{name: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_steps", None),
        ("max_steps", 1),
        ("patience", None),
        ("patience", 1),
        ("eval_every", None),
        ("save_every", 5),
        ("label_smoothing", 0.0),
        ("label_smoothing", 0.1),
        ("warmup_ratio", 0.0),
        ("warmup_steps", 0),
        ("warmup_steps", None),
        ("weight_decay", 0.0),
        ("max_train_examples", 1),
        ("max_eval_examples", None),
        ("epochs", 0.5),
        ("epochs", 10),
        ("adam_betas", [0.9, 0.98]),
        ("adam_betas", (0.0, 0.0)),
        ("adam_eps", 1e-6),
        ("max_grad_norm", None),
        ("num_beams", 4),
        ("max_new_tokens", None),
        ("max_new_tokens", 1),
    ],
)
def test_valid_option_is_accepted(name, value):
    config = TrainConfig(**{name: value})
    expected = tuple(value) if name == "adam_betas" else value
    assert getattr(config, name) == expected


def test_every_option_has_help_text():
    helps = TrainConfig.help_texts()
    assert set(helps) == TrainConfig.field_names()
    for field in dataclasses.fields(TrainConfig):
        assert isinstance(field.metadata.get("help"), str) and field.metadata["help"].strip(), field.name


def test_training_config_imports_nothing_heavy():
    # The command line builds its options from TrainConfig before loading torch / transformers; the
    # package's __init__ is lazy (PEP 562), so importing the module as users do loads neither.
    code = (
        "import sys; from inducer.training.config import TrainConfig; TrainConfig(); "
        "heavy = [n for n in ('torch', 'transformers', 'accelerate', 'datasets') if n in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_training_still_exports_train_config():
    from inducer.training import trainer as training

    assert training.TrainConfig is TrainConfig
