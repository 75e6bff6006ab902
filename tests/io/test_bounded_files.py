"""Files from strangers are read within limits (size, depth, YAML aliases, regular files only);
import_peft checks tensors as load_adapter does; outputs never land on a command's inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import inducer
from inducer.app.recipes import RecipeError, load_recipe
from inducer.io.bounded_files import FileLimitError, read_json, read_yaml
from tests.tiny import make_model, run_cli

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


def _lora():
    return inducer.attach(make_model("gpt2", 50), inducer.LoRAConfig(r=2))


def test_yaml_aliases_depth_and_size(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(LAUGHS)
    with pytest.raises(FileLimitError, match="alias"):
        read_yaml(bomb)
    with pytest.raises(RecipeError, match="alias"):  # the recipe loader goes through it
        load_recipe(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("x: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(FileLimitError, match="levels"):
        read_yaml(deep)
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * (2 << 20) + "\n")
    with pytest.raises(RecipeError, match="byte limit"):
        load_recipe(big)
    fine = tmp_path / "fine.yaml"
    fine.write_text("a: [1, {b: 2}]\nc: text\n")
    assert read_yaml(fine) == {"a": [1, {"b": 2}], "c": "text"}


def test_json_depth_size_and_special_files(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200 + "]" * 200)
    with pytest.raises(FileLimitError, match="levels"):
        read_json(deep)
    brackets_in_strings = tmp_path / "strings.json"
    brackets_in_strings.write_text(json.dumps({"a": "[[[[" * 100, "b": ['\\"{{{{' * 50]}))
    assert read_json(brackets_in_strings)["a"].startswith("[[[[")
    with pytest.raises(FileLimitError, match="byte limit"):
        read_json(brackets_in_strings, max_bytes=100)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(FileLimitError, match="not a regular file"):
        read_json(fifo)  # refused unread: opening it would block


def test_adapter_and_peft_configs_are_bounded(tmp_path):
    model = inducer.attach(make_model("gpt2", 50), inducer.InducerConfig(r_k=1, r_v=1))
    inducer.save_adapter(model, tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").write_text("[" * 500 + "]" * 500)
    base = make_model("gpt2", 50)
    with pytest.raises(inducer.AdapterFormatError, match="levels"):
        inducer.load_adapter(base, tmp_path / "adapter")
    peft = inducer.export_peft(_lora(), tmp_path / "peft")
    config = (peft / "adapter_config.json").read_text()
    (peft / "adapter_config.json").write_text(" " * (2 << 20) + config)
    with pytest.raises(inducer.AdapterFormatError, match="byte limit"):
        inducer.import_peft(make_model("gpt2", 50), peft)


def test_import_peft_refuses_non_finite_tensors_and_leaves_the_model(tmp_path):
    peft = inducer.export_peft(_lora(), tmp_path / "peft")
    weights = peft / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(weights))
    base = make_model("gpt2", 50)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(inducer.AdapterFormatError, match="NaN"):
        inducer.import_peft(base, peft)
    assert not hasattr(base, "_inducer_state")
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_outputs_never_onto_inputs(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for output, relation in ((adapter, "is"), (adapter / "metrics.json", "lies inside"),
                             (adapter / "adapter_config.json", "lies inside")):  # fmt: skip
        result = run_cli("eval", "--adapter", adapter, "--output", output, expect=2)
        assert f"{relation} the input --adapter" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json"]
    assert (adapter / "adapter_config.json").read_text() == "{}"
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\na,0\n")
    result = run_cli("train", "--train-file", data / "train.csv", "--task", "classification",
                     "--output", data, "--overwrite", expect=2)  # fmt: skip
    assert "contains the input --train-file" in result.output
    assert (data / "train.csv").read_text() == "text,label\na,0\n"
    result = run_cli("compare", "--recipe", data / "train.csv", "--output", data / "train.csv", expect=2)
    assert "is the input --recipe" in result.output
