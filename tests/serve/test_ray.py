"""Replicas on Ray Serve, with a real local Ray cluster on CPU (2 replicas) and HTTP clients on
loopback: answers equal offline ``generate``; repeat requests for an adapter go to the replica that
holds it (seen in the replicas' own metrics); a replica killed in the middle of a load leaves the
other serving, and the request is retried there or answered with a clear error.

Slow (a Ray cluster starts): ``PYTHONPATH=src:/path/to/ray python -m pytest -m slow tests/serve/test_ray.py``.
"""

from __future__ import annotations

import re
import shutil
import threading
import time

import httpx
import pytest

from inducer.serve.protocol import Limits
from inducer.serve.server import ServeOptions

from .conftest import free_port
from .test_completions import PROMPTS, offline_tokens, prompt_ids

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
SLOW_S = 6.0  # a "slow-*" adapter's load takes this long on a replica: time to kill it


@pytest.fixture(scope="module")
def cluster(served, tmp_path_factory):
    from inducer.serve.ray_app import build

    store = tmp_path_factory.mktemp("ray-store")
    for name, folder in served["adapters"].items():
        shutil.copytree(folder, store / name)
        shutil.copytree(folder, store / f"slow-{name}")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = ServeOptions(str(served["base"]), adapter_store=str(store), base_name="tiny", device="cpu",
                           limits=Limits(max_tokens=40, max_adapters=4))  # fmt: skip
    serve.run(build(options, replicas=2, slow_load=("slow-", SLOW_S)), name="inducer", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _complete(url: str, model: str, prompt: str = PROMPTS[0], timeout: float = 60) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 10, "temperature": 0, "return_token_ids": True}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)


def _replica_metrics(url: str, tries: int = 60) -> dict[str, str]:
    """Each replica's /metrics, by its id (the ingress sends each GET to some replica)."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        response = httpx.get(f"{url}/metrics", timeout=10)
        seen[response.headers["x-inducer-replica"]] = response.text
        if len(seen) >= 2:
            break
    return seen


def _count(metrics: str, adapter: str) -> int:
    series = f'inducer_requests_total{{adapter="{adapter}",endpoint="completions",status="200"}}'
    found = re.search(re.escape(series) + r" (\S+)", metrics)
    return int(float(found.group(1))) if found else 0


def test_answers_and_affinity(cluster, served):
    expected = offline_tokens(served, "ind", prompt_ids(served, PROMPTS[0]), 10)
    first = _complete(cluster, "ind")
    assert first.status_code == 200, first.text
    holder = first.headers["x-inducer-replica"]
    time.sleep(1.5)  # the replica reports the adapter it loaded to Ray's controller (every 0.1 s)
    repeats = [_complete(cluster, "ind") for _ in range(6)]
    assert [r.json()["choices"][0]["token_ids"] for r in [first, *repeats]] == [expected] * 7
    assert [r.headers["x-inducer-replica"] for r in repeats] == [holder] * 6
    metrics = _replica_metrics(cluster)
    assert len(metrics) == 2, list(metrics)
    assert {replica: _count(text, "ind") for replica, text in metrics.items()} == {
        holder: 7, **{r: 0 for r in metrics if r != holder}}  # fmt: skip
    assert 'inducer_adapter_loads_total{result="ok"} 1' in metrics[holder]
    assert _complete(cluster, "nope").status_code == 404
    for name in ("mix", "pre"):  # the other adapters answer as offline, whichever replica takes them
        got = _complete(cluster, name, PROMPTS[1]).json()["choices"][0]["token_ids"]
        assert got == offline_tokens(served, name, prompt_ids(served, PROMPTS[1]), 10)


def test_replica_killed_mid_load(cluster, served):
    replicas = set(_replica_metrics(cluster))
    assert len(replicas) == 2
    result: dict = {}

    def slow_request() -> None:
        result["response"] = _complete(cluster, "slow-pre", timeout=90)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)
    # The loading replica's metrics say so; Ray sends these GETs mostly to the other (less loaded)
    # one, whose metrics then say it is not the one loading.
    loading, idle = set(), set()
    for _ in range(10):
        response = httpx.get(f"{cluster}/metrics", timeout=10)
        busy = re.search(r"^inducer_replica_loads_in_progress 1$", response.text, re.M)
        (loading if busy else idle).add(response.headers["x-inducer-replica"])
    candidates = loading or (replicas - idle)
    assert len(candidates) == 1, (loading, idle)
    victim = candidates.pop()
    ray.kill(ray.get_actor(victim, namespace="serve"))
    # The other replica keeps serving meanwhile.
    other = _complete(cluster, "ind", PROMPTS[2])
    assert other.status_code == 200, other.text
    assert other.headers["x-inducer-replica"] != victim
    assert other.json()["choices"][0]["token_ids"] == offline_tokens(
        served, "ind", prompt_ids(served, PROMPTS[2]), 10)  # fmt: skip
    thread.join(90)
    response = result["response"]
    print(f"killed {victim}; the request got {response.status_code} from",
          response.headers.get("x-inducer-replica"))  # fmt: skip
    if response.status_code == 200:  # retried on the other replica
        assert response.headers["x-inducer-replica"] != victim
        assert response.json()["choices"][0]["token_ids"] == offline_tokens(
            served, "pre", prompt_ids(served, PROMPTS[0]), 10)  # fmt: skip
    else:  # or a clear error
        assert response.status_code == 503, response.text
        assert "replica" in response.json()["error"]["message"]
