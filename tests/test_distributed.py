"""Data parallelism through ``accelerate launch`` and crash safety of training, in real subprocesses.

Both use a tiny BERT saved to disk and the SST-2 fixture; each subprocess run takes a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inducer.io.adapter_format import weights_path
from inducer.training.checkpoint import STATE_FILE, load_train_state
from inducer.training.data_parallel import shard

from .tiny import make_model, make_tokenizer, task_dir

ACCELERATE = Path(sys.executable).with_name("accelerate")


def test_shard_splits_a_global_batch_contiguously():
    rows = list(range(7))
    parts = [shard(rows, rank, 3) for rank in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard([9], rank, 2) for rank in range(2)] == [[9], []]  # rank 1 runs a zero-weight row


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A tiny BERT without dropout: runs with different process counts draw different dropout masks,
    so only a deterministic model can be compared across them."""
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    tokenizer = make_tokenizer("bert")
    model = make_model("bert", len(tokenizer))
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _train_args(model: Path, output: Path, method: str, *extra: str) -> list[str]:
    return [
        "--threads", "1", "train", "--model", str(model), "--task", "sst2", "--data-dir", task_dir("sst2"),
        "--method", method, "--output", str(output), "--lr", "1e-2", "-q", *extra,
    ]  # fmt: skip


def _run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return result


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(weights_path(folder))


@pytest.mark.parametrize("method", ["inducer", "full"])
def test_two_processes_equal_one_with_the_same_global_batch(bert_folder, tmp_path, method):
    # 44 training rows in global batches of 6 (the last holds 2), two micro-batches per step: every
    # step splits each micro-batch over the processes, unevenly for the last one.
    extra = ["--batch-size", "6", "--grad-accum", "2", "--max-steps", "5"]
    extra += ["--eval-every", "5", "--save-every", "5"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "inducer", *_train_args(bert_folder, one, method, *extra)])
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"]
    _run([*launch, "-m", "inducer", *_train_args(bert_folder, two, method, *extra)])

    single, parallel = _adapter(one / "last"), _adapter(two / "last")
    assert single.keys() == parallel.keys()
    start = make_model("bert", len(make_tokenizer("bert")))  # the weights before training
    moved = 0.0
    for name, tensor in single.items():
        if name.endswith("attention.self.key.bias"):
            # Softmax ignores a shift shared by all keys, so the key bias's gradient is zero in exact
            # arithmetic; Adam scales its rounding noise up to steps of size lr, different in each run.
            assert float((parallel[name] - tensor).abs().max()) <= 2 * 5 * 1e-2
            continue
        torch.testing.assert_close(parallel[name], tensor, rtol=1e-5, atol=1e-6)
        before = dict(start.named_parameters()).get(name.removeprefix("base."))
        if before is not None:
            moved = max(moved, float((tensor - before.detach()).abs().max()))
    assert method != "full" or moved > 1e-3  # training changed the weights: the comparison means something
    # Only the main process wrote: one log line per event, and the checkpoint has both RNG streams.
    logged = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "validation"] == [5]
    state = load_train_state(two / "checkpoint")
    assert state.processes == 2 and len(state.rng) == 2


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """Kill -9 a training process right after its first checkpoint (mid-epoch), resume it, and get
    the adapter of an uninterrupted run, bit for bit (dropout on: RNG streams restored too)."""
    from .tiny import save_tiny

    model = save_tiny("bert", tmp_path / "bert")  # dropout 0.1
    # 44 rows / batch 4 = 11 steps per epoch; a checkpoint every 3 steps lands mid-epoch.
    extra = ["--batch-size", "4", "--max-steps", "120", "--eval-every", "40", "--save-every", "3"]
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    _run([sys.executable, "-m", "inducer", *_train_args(model, reference, "inducer", *extra)])

    command = [sys.executable, "-m", "inducer", *_train_args(model, crashed, "inducer", *extra)]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = crashed / "checkpoint" / STATE_FILE  # written last: the checkpoint is complete
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = load_train_state(checkpoint.parent)
    assert 0 < saved.step < 120 and saved.batch > 0  # killed mid-run, checkpoint mid-epoch
    assert not (crashed / "last").exists()

    _run([*command, "--resume"])
    resumed, uninterrupted = _adapter(crashed / "last"), _adapter(reference / "last")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    steps = [json.loads(line)["step"] for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    reference_log = (reference / "metrics.jsonl").read_text().splitlines()
    # The crashed run's log lines after its checkpoint were dropped on resume, then redone.
    assert steps == [json.loads(line)["step"] for line in reference_log]


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_example_accelerate_configs_load(name):
    """The README's scaling-out configs are valid accelerate config files (unknown keys are refused)."""
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).parents[1] / "examples" / "accelerate"
    config = load_config_from_file(str(folder / f"{name}.yaml"))
    assert config.num_processes == 2
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert config.distributed_type.value == expected
    if name == "deepspeed_zero3":  # accelerator.get_state_dict can only gather ZeRO-3 weights with this
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
    if name == "fsdp":  # a frozen base and trainable adapters share FSDP units
        assert config.fsdp_config["fsdp_use_orig_params"] is True
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
