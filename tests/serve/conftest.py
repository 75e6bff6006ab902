"""A tiny GPT-2 with three saved adapters (inducer, inducer + LoRA, prefix-tuning), and a real
``inducer serve`` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch

import inducer
from tests.tiny import save_tiny

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}a : {% endif %}"
)
ADAPTERS = {
    "ind": [inducer.InducerConfig(r_k=2, r_v=3)],
    "mix": [inducer.InducerConfig(r_k=1, r_v=2), inducer.LoRAConfig(r=2)],
    "pre": [inducer.PrefixConfig(length=3, reparam_hidden=16)],
}


def _randomise(model, seed: int) -> None:
    """Sizeable values in every added tensor, so each adapter changes the generated text."""
    g = torch.Generator().manual_seed(seed)
    from inducer.io.adapter_format import owned_names

    owned = owned_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in owned:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def load_base(folder: Path):
    """The base model and tokenizer the server loads (``load_model``: pad token set)."""
    from inducer.data.base_models import load_model

    loaded = load_model(str(folder), "generation")
    return loaded.model.eval(), loaded.tokenizer


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> dict:
    """Folders: the tiny base (with a chat template) and one saved adapter per entry of ADAPTERS."""
    root = tmp_path_factory.mktemp("serve")
    base = save_tiny("gpt2", root / "base")
    model, tokenizer = load_base(base)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base)
    folders = {}
    for seed, (name, configs) in enumerate(ADAPTERS.items()):
        model, _ = load_base(base)
        inducer.attach(model, configs)
        _randomise(model, seed + 1)
        folders[name] = root / "adapters" / name
        inducer.save_adapter(model, folders[name])
    return {"base": base, "adapters": folders, "root": root / "adapters"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """An ``inducer serve`` subprocess; ``url`` is its base URL."""

    def __init__(self, base: Path, adapters: dict[str, Path], *extra: str, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "inducer", "--threads", "1", "serve", "--model", str(base),
                   "--port", str(self.port), *extra]
        for name, folder in adapters.items():
            command += ["--adapter", f"{name}={folder}"]
        if api_key:
            command += ["--api-key", api_key]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A file, not a pipe: a full pipe would block the server's request log.
        self.log_path = Path(tempfile.mkdtemp()) / "server.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"inducer serve exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"inducer serve did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def server(served):
    """The shared server: the tiny base (as "tiny"), its three adapters, an --adapter-root. Tests
    that add adapters delete them again."""
    running = Server(served["base"], served["adapters"], "--adapter-root", str(served["root"]),
                     "--max-prompt-tokens", "64", "--max-tokens", "40", "--max-wait-ms", "100",
                     "--base-name", "tiny")
    yield running
    running.stop()
