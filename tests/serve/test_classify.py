"""``POST /v1/classify`` on a sequence-classification base: each adapter's labels and probabilities
(its own trained head) equal its offline forward, for requests sent together."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

import inducer
from inducer.data.base_models import load_model
from tests.tiny import save_tiny

from .conftest import Server, _randomise

TEXTS = ["the food is good", "slow service and cold food", "a great place"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    base = save_tiny("bert", root / "base")
    folders = {}
    for seed, (name, configs) in enumerate({"sent": [inducer.InducerConfig(r_k=2, r_v=2)],
                                            "topic": [inducer.LoRAConfig(r=2)]}.items()):
        model = load_model(str(base), "classification", 2).model
        inducer.attach(model, configs)
        _randomise(model, seed + 5)
        with torch.no_grad():  # a trained head of its own
            model.classifier.weight.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
        folders[name] = root / name
        inducer.save_adapter(model, folders[name])
    server = Server(base, folders)
    yield server, base, folders
    server.stop()


def _offline(base, folder) -> list[list[float]]:
    loaded = load_model(str(base), "classification", 2)
    if folder is not None:
        inducer.load_adapter(loaded.model, folder)
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(loaded.model.eval()(**batch).logits, -1).tolist()


def test_classify_per_adapter_equals_offline(classifier):
    server, base, folders = classifier

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(f"{server.url}/v1/classify",
                                                      json={"model": name, "input": TEXTS})
                                          for name in ("sent", "topic", base.name)])

    answers = dict(zip(("sent", "topic", None), asyncio.run(run()), strict=True))
    for name, response in answers.items():
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        expected = _offline(base, folders[name] if name else None)
        for row, probs in zip(rows, expected, strict=True):
            assert list(row["probabilities"]) == ["LABEL_0", "LABEL_1"]
            assert list(row["probabilities"].values()) == pytest.approx(probs, abs=1e-5)
            assert row["label"] == f"LABEL_{probs.index(max(probs))}"
    assert answers["sent"].json()["data"] != answers["topic"].json()["data"]
    completion = httpx.post(f"{server.url}/v1/completions", json={"model": "sent", "prompt": "hi"})
    assert completion.status_code == 400 and "/v1/classify" in completion.json()["error"]["message"]
