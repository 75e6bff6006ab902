"""Adapters on demand (``--adapter-store``): answers equal preloaded ones token for token, unknown
names get 404, broken ones 400 with the server unchanged, concurrent first requests load once,
eviction never drops an adapter in use, and a hub store works offline from the HF cache."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import threading

import httpx
import pytest

from inducer.serve.decoding import Sampling, Sequence
from inducer.serve.engine import Engine
from inducer.serve.metrics import Metrics
from inducer.serve.protocol import Limits, ServeError
from inducer.serve.scheduler import Scheduler
from inducer.serve.store import AdapterStore
from tests.tiny import run_cli

from .conftest import Server
from .test_completions import PROMPTS, offline_tokens, prompt_ids


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _complete(server, model: str, prompt: str = PROMPTS[0], tokens: int = 10) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "return_token_ids": True}  # fmt: skip
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)


@pytest.fixture(scope="module")
def store(served, tmp_path_factory):
    """A store folder: the three adapters, two more copies, and a corrupted one."""
    root = tmp_path_factory.mktemp("store")
    for name, folder in served["adapters"].items():
        shutil.copytree(folder, root / name)
    shutil.copytree(served["adapters"]["pre"], root / "twin")
    shutil.copytree(served["adapters"]["ind"], root / "broken")
    weights = next((root / "broken").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    return root


@pytest.fixture(scope="module")
def store_server(served, store):
    """A server with no adapter given, two slots, loading from ``store``."""
    running = Server(served["base"], {}, "--adapter-store", str(store), "--max-adapters", "2",
                     "--max-tokens", "40", "--base-name", "tiny")  # fmt: skip
    yield running
    running.stop()


def test_on_demand_equals_preloaded(server, store_server, served):
    # ind, mix, pre, ind with two slots: ind is evicted and loaded again, and still answers the same.
    for name in ("ind", "mix", "pre", "ind"):
        for prompt in PROMPTS[:2]:
            got = _complete(store_server, name, prompt)
            assert got.status_code == 200, got.text
            preloaded = _complete(server, name, prompt).json()["choices"][0]
            assert got.json()["choices"][0]["token_ids"] == preloaded["token_ids"], (name, prompt)
            assert got.json()["choices"][0]["text"] == preloaded["text"]
    assert _complete(store_server, "tiny").json()["choices"][0]["token_ids"] == offline_tokens(
        served, None, prompt_ids(served, PROMPTS[0]), 10)  # fmt: skip
    assert _metric(store_server, "inducer_adapter_evictions_total") >= 2
    assert _metric(store_server, 'inducer_adapter_loads_total{result="ok"}') == 4
    assert _metric(store_server, "inducer_adapters_resident") == 2
    assert 0 < _metric(store_server, "inducer_adapter_cache_hit_ratio") < 1
    assert "inducer_adapter_load_seconds_count" in httpx.get(f"{store_server.url}/metrics").text


def test_unknown_and_broken_names(store_server, store):
    before = [m["id"] for m in httpx.get(f"{store_server.url}/v1/models").json()["data"]]
    for name in ("nope", "..", "a/b", "../store"):
        response = _complete(store_server, name)
        assert response.status_code == 404, (name, response.text)
        assert response.json()["error"]["code"] == "model_not_found"
    broken = _complete(store_server, "broken")
    assert broken.status_code == 400, broken.text
    message = broken.json()["error"]["message"]
    assert "checksum" in message and str(store) not in message, message  # no server paths
    assert [m["id"] for m in httpx.get(f"{store_server.url}/v1/models").json()["data"]] == before


def test_concurrent_first_requests_load_once(store_server, served):
    loads = _metric(store_server, 'inducer_adapter_loads_total{result="ok"}')

    async def burst() -> list[httpx.Response]:
        body = {"model": "twin", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0,
                "return_token_ids": True}  # fmt: skip
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{store_server.url}/v1/completions", json=body)
                                          for _ in range(8)))  # fmt: skip

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    expected = offline_tokens(served, "pre", prompt_ids(served, PROMPTS[1]), 8)  # twin is pre's copy
    assert all(a.json()["choices"][0]["token_ids"] == expected for a in answers)
    assert _metric(store_server, 'inducer_adapter_loads_total{result="ok"}') == loads + 1


def test_eviction_never_drops_an_adapter_in_use(served, store):
    """In process, with the real engine and scheduler: one slot; while a sequence of ``ind`` waits
    (the worker is held) or a request holds its pin, ``mix`` cannot take the slot; once ``ind`` is
    idle it is evicted, and the held sequence generated exactly its offline tokens."""
    engine = Engine.load(str(served["base"]), {}, device="cpu", base_name="tiny",
                         limits=Limits(max_adapters=1))  # fmt: skip
    scheduler = Scheduler(engine, Metrics(), max_batch_size=4, max_wait_ms=0)
    scheduler.start()
    adapters = AdapterStore(str(store), engine, scheduler, Metrics(), max_adapters=1, slot_wait_s=0.3)
    prompt = prompt_ids(served, PROMPTS[2])
    done = threading.Event()

    async def scenario() -> Sequence:
        pin = await adapters.acquire("ind")
        with pytest.raises(ServeError) as refused:  # pinned: no slot for mix
            await adapters.acquire("mix")
        assert refused.value.status == 503 and engine.adapter_names() == ["ind"]
        hold = threading.Event()
        scheduler.call(hold.wait)  # the worker waits: ind's sequence stays queued, in use
        seq = Sequence(prompt, "ind", Sampling(12, 0.0), lambda s: s.finished and done.set(), engine.decode)
        scheduler.submit([seq])
        adapters.release(pin)  # unpinned, but its sequence is in flight
        with pytest.raises(ServeError):
            await adapters.acquire("mix")
        assert engine.adapter_names() == ["ind"] and adapters.stats["evictions"] == 0
        hold.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 30)
        hold.clear()
        scheduler.call(hold.wait)  # the worker waits again: ind's removal stays pending
        loading = asyncio.ensure_future(adapters.acquire("mix"))  # ind is idle now: evicted for mix
        while adapters.stats["evictions"] == 0:
            await asyncio.sleep(0.01)
        # Chosen, but the worker has not removed it: the engine still lists it, and a request must
        # still go through the store (a new load after the removal), never take it as fixed.
        assert "ind" in engine.adapter_names() and adapters.manages("ind")
        hold.set()
        adapters.release(await loading)
        assert engine.adapter_names() == ["mix"] and adapters.stats["evictions"] == 1
        assert not adapters.manages("ind")
        return seq

    try:
        seq = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        adapters.close()
        scheduler.stop()
    assert seq.error is None and seq.generated == offline_tokens(served, "ind", prompt, 12)


def _hub_cache(cache, repo_id: str, folder) -> None:
    """``folder``'s files laid out as huggingface_hub's cache holds a downloaded repo."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in folder.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(f"../../blobs/{blob}")


def test_hub_store_offline_from_the_cache(served, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _hub_cache(cache, "acme/tiny-ind", served["adapters"]["ind"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    running = Server(served["base"], {}, "--adapter-store", "hf://acme/tiny-", "--base-name", "tiny")
    try:
        got = _complete(running, "ind")
        assert got.status_code == 200, got.text + running.output()
        assert got.json()["choices"][0]["token_ids"] == offline_tokens(
            served, "ind", prompt_ids(served, PROMPTS[0]), 10)  # fmt: skip
        assert _complete(running, "mix").status_code == 404  # not in the cache, and offline
    finally:
        running.stop()


def test_command_line_errors_are_one_line(served, tmp_path):
    for args, words in (
        (["--adapter-store", str(tmp_path), "--adapter-root", str(tmp_path)], "not both"),
        (["--adapter-store", str(tmp_path / "missing")], "not a folder"),
        (["--adapter-store", "hf://no-prefix"], "hf://ORG/PREFIX"),
        (["--ray", "--adapter-root", str(tmp_path)], "--adapter-root"),
        (["--ray", "--replicas", "0"], "--replicas"),
    ):
        result = run_cli("serve", "--model", str(served["base"]), *args, expect=2)
        assert words in result.output and "Traceback" not in result.output, (args, result.output)
