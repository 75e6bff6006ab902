"""Bounded work: past --max-queue requests in flight the server answers 429 (with Retry-After); a
client that gives up on a whole (non-streamed) response has its sequences cancelled, not generated."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from .conftest import Server

BODY = {"model": "ind", "prompt": "the food is", "max_tokens": 100, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def narrow(served):
    """Two requests in flight at most; an idle server waits 3 s for a batch of 4 before it starts,
    so requests stay queued long enough to watch."""
    server = Server(served["base"], {"ind": served["adapters"]["ind"]}, "--max-batch-size", "4",
                    "--max-queue", "2", "--max-wait-ms", "3000")  # fmt: skip
    yield server
    server.stop()


def _log_entries(server) -> list[dict]:
    marker = "inducer.serve.requests INFO "
    return [json.loads(line.split(marker, 1)[1]) for line in server.output().splitlines() if marker in line]


def _active(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text  # answered even with the queue full
    line = next(line for line in text.splitlines() if line.startswith("inducer_sequences_active"))
    return float(line.split()[1])


def test_full_queue_gets_429_and_abandoned_requests_are_cancelled(narrow):
    url = f"{narrow.url}/v1/completions"
    outcomes: dict = {}

    def give_up():
        try:
            httpx.post(url, json=BODY, timeout=0.5)
        except httpx.TimeoutException as err:
            outcomes["abandoned"] = err

    def wait():
        outcomes["waited"] = httpx.post(url, json={**BODY, "max_tokens": 5}, timeout=60)

    threads = [threading.Thread(target=give_up), threading.Thread(target=wait)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2.5
    while _active(narrow) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = httpx.post(url, json=BODY, timeout=30)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error" and "--max-queue" in refused.text
    for thread in threads:
        thread.join(timeout=60)
    assert "abandoned" in outcomes and outcomes["waited"].status_code == 200
    gone = [e for e in _log_entries(narrow) if e["status"] == 499]
    assert len(gone) == 1, _log_entries(narrow)
    assert gone[0]["completion_tokens"] == 0 and gone[0]["finish_reasons"] == ["cancelled"]
    assert _active(narrow) == 0  # its sequence was dropped, not generated
    assert all(e["completion_tokens"] < 100 for e in _log_entries(narrow))
    assert httpx.post(url, json={**BODY, "max_tokens": 2}, timeout=30).status_code == 200  # still serving
