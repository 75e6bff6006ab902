"""A server with --api-key: 401 without the key (all but /health); SIGTERM drains: requests in flight
complete, new ones get 503, then the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import pytest

from .conftest import Server

KEY = {"Authorization": "Bearer s3cret"}
BODY = {"model": "ind", "prompt": "the food is", "max_tokens": 8, "temperature": 0}
LONG = {**BODY, "max_tokens": 150, "ignore_eos": True}  # ~1 s in all for six, one at a time


@pytest.fixture(scope="module")
def keyed(served):
    """One sequence at a time (--max-batch-size 1), so queued requests stay in flight a while."""
    server = Server(
        served["base"], {"ind": served["adapters"]["ind"]}, "--max-batch-size", "1", api_key="s3cret"
    )
    yield server
    server.stop()


def test_api_key(keyed, served):
    url = f"{keyed.url}/v1/completions"
    assert httpx.get(f"{keyed.url}/health").status_code == 200  # probes need no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = httpx.post(url, json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    for path in ("/metrics", "/v1/models"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 401
    assert httpx.delete(f"{keyed.url}/v1/adapters/ind").status_code == 401
    assert httpx.post(url, json=BODY, headers=KEY).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret", max_retries=0)
    # A local folder is called by its last part: clients never learn the server's paths.
    assert [m.id for m in client.models.list().data] == [served["base"].name, "ind"]


def _active(server) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=KEY).text
    return float(
        next(line.split()[1] for line in text.splitlines() if line.startswith("inducer_sequences_active"))
    )


def test_sigterm_drains_in_flight_and_refuses_new(keyed):
    answers: list = []

    def ask():
        answers.append(httpx.post(f"{keyed.url}/v1/completions", json=LONG, headers=KEY, timeout=120))

    clients = [threading.Thread(target=ask) for _ in range(6)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 30
    while _active(keyed) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    keyed.process.send_signal(signal.SIGTERM)
    while httpx.get(f"{keyed.url}/health").status_code == 200:
        time.sleep(0.01)
    refused = httpx.post(f"{keyed.url}/v1/completions", json=BODY, headers=KEY)
    assert refused.status_code == 503 and refused.json()["error"]["message"]
    assert httpx.get(f"{keyed.url}/health").status_code == 503
    for thread in clients:
        thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200] * 6  # every request answered exactly once
    texts = {a.json()["choices"][0]["text"] for a in answers}
    assert len(texts) == 1  # the same greedy answer for all
    assert all(a.json()["usage"]["completion_tokens"] == 150 for a in answers)
    assert keyed.process.wait(timeout=60) == 0
