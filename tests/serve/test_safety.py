"""Safe defaults: adapter management off without --adapter-root; no listening beyond loopback without
an API key (or a loud --insecure); every adapter file inside the root, within size and count limits,
read only if it is a regular file; error messages never show the server's paths; /health says up or
down and nothing else; option ranges checked before anything starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest

from inducer.serve.engine import Engine
from inducer.serve.protocol import Limits, ServeError
from inducer.serve.server import check_exposure, is_loopback
from tests.tiny import run_cli

from .conftest import Server


@pytest.fixture(scope="module")
def rootless(served):
    """A server with a startup adapter and no --adapter-root."""
    server = Server(served["base"], {"ind": served["adapters"]["ind"]})
    yield server
    server.stop()


def test_adapter_management_is_off_without_a_root(rootless, served):
    body = {"name": "x", "path": str(served["adapters"]["pre"])}
    added = httpx.post(f"{rootless.url}/v1/adapters", json=body)
    deleted = httpx.delete(f"{rootless.url}/v1/adapters/ind")
    for response in (added, deleted):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert "--adapter-root" in error["message"] and error["code"] == "adapter_admin_disabled"
    models = [m["id"] for m in httpx.get(f"{rootless.url}/v1/models").json()["data"]]
    assert models == [served["base"].name, "ind"]


def test_health_says_up_and_nothing_else(rootless):
    response = httpx.get(f"{rootless.url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)],
)  # fmt: skip
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_exposure_needs_a_key_or_insecure():
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "k3y", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ValueError, match="--api-key"):
        check_exposure("0.0.0.0", None, False)
    with pytest.raises(ValueError, match="empty"):
        check_exposure("127.0.0.1", "  ", False)


def test_cli_refuses_a_public_bind_without_a_key(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path), "--host", "0.0.0.0", expect=2)
    assert "--api-key" in result.output and "--insecure" in result.output and "Traceback" not in result.output


def test_insecure_is_loud(tmp_path):
    """--insecure gets past the check (then fails on the missing model, before listening) and warns."""
    command = [sys.executable, "-m", "inducer", "serve", "--model", str(tmp_path / "missing"),
               "--host", "0.0.0.0", "--insecure"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "INDUCER_API_KEY"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "INSECURE" in done.stderr and "WITHOUT an API key" in done.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "0"), ("--port", "70000"), ("--max-batch-size", "0"), ("--max-wait-ms", "nan"),
     ("--max-wait-ms", "-1"), ("--drain-timeout", "inf"), ("--max-tokens", "0"), ("--max-n", "0"),
     ("--max-body-bytes", "10"), ("--max-queue", "0"), ("--max-adapters", "0"),
     ("--max-prompt-tokens", "-5")],
)  # fmt: skip
def test_option_ranges_are_one_line(tmp_path, option, value):
    result = run_cli("serve", "--model", str(tmp_path), option, value, expect=2)
    assert option in result.output and "Traceback" not in result.output


def test_threads_must_be_positive():
    result = run_cli("--threads", "0", "info", expect=2)
    assert "--threads" in result.output and "Traceback" not in result.output


def test_training_numbers_must_be_finite():
    from inducer.training.config import TrainConfig

    for field in ("lr", "epochs", "weight_decay", "max_grad_norm"):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: float("inf")})


# --- adapter folders, in-process ------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(served, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(served["adapters"]["ind"], root / "ind")
    engine = Engine.load(str(served["base"]), {}, str(root), device="cpu",
                         limits=Limits(max_adapters=2, max_adapter_files=4))  # fmt: skip
    return engine, root


def _refusal(engine, name: str, path: str) -> ServeError:
    before = engine.adapter_names()
    with pytest.raises(ServeError) as caught:
        engine.add_adapter(name, path)
    assert engine.adapter_names() == before
    assert str(engine.adapter_root) not in caught.value.message  # no server path in any message
    return caught.value


def test_a_path_is_relative_to_the_root(engine):
    engine, root = engine
    engine.add_adapter("rel", "ind")
    assert "rel" in engine.adapter_names()
    engine.remove_adapter("rel")


def test_every_file_must_resolve_inside_the_root(engine, served, tmp_path):
    engine, root = engine
    outside = tmp_path / "outside"
    shutil.copytree(served["adapters"]["ind"], outside)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    for file in outside.iterdir():  # the folder is inside; its files link out
        (sneaky / file.name).symlink_to(file)
    error = _refusal(engine, "x", "sneaky")
    assert error.status == 400 and "links outside" in error.message
    (root / "linked").symlink_to(outside, target_is_directory=True)
    assert "outside --adapter-root" in _refusal(engine, "x", "linked").message
    assert "outside --adapter-root" in _refusal(engine, "x", str(outside)).message


def test_special_files_and_limits_are_refused_before_reading(engine, served):
    engine, root = engine
    fifo = root / "fifo"
    shutil.copytree(served["adapters"]["ind"], fifo)
    os.mkfifo(fifo / "notes.txt")  # reading it would block the worker forever
    assert "not a regular file" in _refusal(engine, "x", "fifo").message
    crowded = root / "crowded"
    shutil.copytree(served["adapters"]["ind"], crowded)
    for i in range(4):
        (crowded / f"extra{i}.txt").write_text("x")
    assert "entries" in _refusal(engine, "x", "crowded").message
    big = root / "big"
    shutil.copytree(served["adapters"]["ind"], big)
    limits = engine.limits
    engine.limits = Limits(max_adapter_bytes=100)
    try:
        error = _refusal(engine, "x", "big")
    finally:
        engine.limits = limits
    assert error.status == 413 and "--max-adapter-bytes" in error.message


def test_max_adapters(engine):
    engine, root = engine
    engine.add_adapter("one", "ind")
    engine.add_adapter("two", "ind")
    try:
        assert "--max-adapters" in _refusal(engine, "three", "ind").message
    finally:
        engine.remove_adapter("one")
        engine.remove_adapter("two")


def test_load_errors_name_the_path_as_given(engine, served):
    engine, root = engine
    broken = root / "broken"
    shutil.copytree(served["adapters"]["ind"], broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    error = _refusal(engine, "x", "broken")
    assert "checksum" in error.message and "broken/adapter-" in error.message
