"""Adapters added and removed at run time: validated like ``load_adapter``, only under
--adapter-root; a deleted adapter's requests in flight finish on it, new ones get 404."""

from __future__ import annotations

import json
import shutil

import httpx
import torch

import inducer

from .conftest import load_base
from .test_completions import offline_tokens, prompt_ids


def _add(server, name: str, path) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/adapters", json={"name": name, "path": str(path)}, timeout=30)


def _models(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]


def test_refused_adapters_leave_the_server_as_it_was(server, served, tmp_path):
    root = served["root"]
    outside = tmp_path / "elsewhere"
    shutil.copytree(served["adapters"]["ind"], outside)
    cases = {"outside the root": _add(server, "x", outside),
             "escaping the root": _add(server, "x", root / ".." / "adapters" / ".." / "base"),
             "missing": _add(server, "x", root / "missing"),
             "taken name": _add(server, "ind", served["adapters"]["mix"]),
             "base's name": _add(server, "tiny", served["adapters"]["mix"]),
             "bad name": _add(server, "a/b", served["adapters"]["mix"])}
    broken = root / "broken"
    shutil.copytree(served["adapters"]["ind"], broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    cases["corrupted weights"] = _add(server, "x", broken)
    other = root / "other-base"  # saved from another base: its fingerprint does not match
    from tests.tiny import make_model

    model = make_model("gpt2", 50)
    inducer.attach(model, inducer.InducerConfig(r_k=1, r_v=1))
    inducer.save_adapter(model, other)
    cases["another base"] = _add(server, "x", other)
    for case, response in cases.items():
        assert response.status_code == 400, (case, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error", case
        message = response.json()["error"]["message"]
        # The client's own path may come back; nothing else of the server's file system does.
        for given in (outside, root / ".." / "adapters" / ".." / "base", root / "missing", broken, other,
                      served["adapters"]["mix"]):  # fmt: skip
            message = message.replace(str(given), "")
        assert str(root) not in message and str(served["base"]) not in message, (case, message)
    assert "root" in cases["outside the root"].json()["error"]["message"]
    assert "root" in cases["escaping the root"].json()["error"]["message"]
    assert "base" in cases["another base"].json()["error"]["message"]
    assert _models(server) == ["tiny", "ind", "mix", "pre"]
    assert httpx.delete(f"{server.url}/v1/adapters/nope").status_code == 404


def test_add_serve_delete(server, served):
    folder = served["root"] / "pre-copy"
    shutil.copytree(served["adapters"]["pre"], folder, dirs_exist_ok=True)
    response = _add(server, "extra", folder)
    assert response.status_code == 200, response.text
    assert _models(server) == ["tiny", "ind", "mix", "pre", "extra"]
    body = {"model": "extra", "prompt": "the food is", "max_tokens": 10, "temperature": 0,
            "return_token_ids": True}
    got = httpx.post(f"{server.url}/v1/completions", json=body).json()["choices"][0]["token_ids"]
    assert got == offline_tokens(served, "pre", prompt_ids(served, "the food is"), 10)
    assert 'adapter="extra"' in httpx.get(f"{server.url}/metrics").text
    assert httpx.delete(f"{server.url}/v1/adapters/extra").status_code == 200
    assert _models(server) == ["tiny", "ind", "mix", "pre"]
    assert 'adapter="extra"' not in httpx.get(f"{server.url}/metrics").text  # its series went with it
    assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 404
    assert httpx.delete(f"{server.url}/v1/adapters/extra").status_code == 404


def test_requests_in_flight_finish_on_a_deleted_adapter(server, served):
    folder = served["root"] / "mix-copy"
    shutil.copytree(served["adapters"]["mix"], folder, dirs_exist_ok=True)
    assert _add(server, "late", folder).status_code == 200
    body = {"model": "late", "prompt": "a great place to eat", "max_tokens": 40, "temperature": 0,
            "stream": True, "ignore_eos": True}
    text = ""
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["text"]
                break
        deleted = httpx.delete(f"{server.url}/v1/adapters/late")
        assert deleted.status_code == 200
        assert httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}).status_code == 404
        for line in lines:
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["text"]
    model, tokenizer = load_base(served["base"])
    inducer.load_adapter(model, served["adapters"]["mix"])
    ids = torch.tensor([tokenizer("a great place to eat")["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                         do_sample=False, eos_token_id=None)
    assert text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "late" not in _models(server)
