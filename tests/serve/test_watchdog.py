"""A dead model worker makes /health fail and the process exit non-zero (its supervisor restarts
it) instead of leaving every request waiting; a second SIGTERM exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from .conftest import Server, free_port

# The worker's loop ends each round with set_members([]) outside any per-sequence guard: a fault
# there (a bug of ours, injected) kills the worker thread.
KILL_WORKER = """
import sys
from inducer.serve import decoding
original = decoding.DecodeBatch.set_members
def broken(self, sequences):
    if not sequences:
        raise RuntimeError("injected worker fault")
    return original(self, sequences)
decoding.DecodeBatch.set_members = broken
from inducer.cli.main import main
sys.argv = ["inducer", "--threads", "1", *sys.argv[1:]]
main()
"""
BODY = {"model": "ind", "prompt": "the food is", "max_tokens": 4, "temperature": 0}


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_a_dead_worker_fails_health_and_exits_nonzero(served, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    command = [sys.executable, "-c", KILL_WORKER, "serve", "--model", str(served["base"]),
               "--port", str(port), "--adapter", f"ind={served['adapters']['ind']}"]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        _wait_healthy(url, process)
        first = httpx.post(f"{url}/v1/completions", json=BODY, timeout=30)  # its round kills the worker
        assert first.status_code in (200, 500, 503)
        statuses = set()
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                statuses.add(httpx.get(f"{url}/health", timeout=1).status_code)
                later = httpx.post(f"{url}/v1/completions", json=BODY, timeout=5)
                assert later.status_code == 503, later.text  # answered, never left waiting
            except httpx.TransportError:  # it stopped listening
                pass
            time.sleep(0.05)
        assert process.wait(timeout=30) == 1
        assert 200 not in statuses  # once dead, never "ok"
        output = (tmp_path / "server.log").read_text()
        assert "injected worker fault" in output and "worker thread died" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_second_sigterm_exits_at_once(served):
    # An idle server waits 5 s for a batch of 4: the first request stays in flight that long.
    server = Server(served["base"], {"ind": served["adapters"]["ind"]}, "--max-batch-size", "4",
                    "--max-wait-ms", "5000")  # fmt: skip
    try:
        url = f"{server.url}/v1/completions"
        thread = threading.Thread(target=lambda: _quietly(lambda: httpx.post(url, json=BODY, timeout=30)))
        thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        while httpx.get(f"{server.url}/health").status_code == 200:
            time.sleep(0.02)
        assert server.process.poll() is None  # draining: the request is still in flight
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 2  # not after the request's 5 s
        assert "second signal" in server.output()
        thread.join(timeout=30)
    finally:
        server.stop()


def _quietly(fn) -> None:
    try:
        fn()
    except httpx.HTTPError:  # the server went away mid-request: expected here
        pass
