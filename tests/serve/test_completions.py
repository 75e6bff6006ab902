"""Completions and chat from a real server equal ``model.generate`` offline, token for token, alone
and batched with requests for other adapters; streaming yields the same text."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import torch

import inducer

from .conftest import load_base

PROMPTS = ["the food is", "a great place to eat", "name the pub near the river", "the service was slow and"]


def offline_tokens(served, adapter: str | None, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy ``model.generate`` on the base with ``adapter`` loaded alone (None: the base)."""
    model, _ = load_base(served["base"])
    if adapter is not None:
        inducer.load_adapter(model, served["adapters"][adapter])
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def prompt_ids(served, text: str) -> list[int]:
    return load_base(served["base"])[1](text)["input_ids"]


def complete(server, model: str, prompt: str, max_tokens: int = 12, **extra) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "return_token_ids": True, **extra}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("adapter", [None, "ind", "mix", "pre"])
def test_greedy_alone_equals_generate(server, served, adapter):
    answer = complete(server, adapter or "tiny", PROMPTS[0])
    choice = answer["choices"][0]
    expected = offline_tokens(served, adapter, prompt_ids(served, PROMPTS[0]), 12)
    assert choice["token_ids"] == expected
    tokenizer = load_base(served["base"])[1]
    assert choice["text"] == tokenizer.decode([t for t in expected if t != 5], skip_special_tokens=True)
    assert answer["usage"]["completion_tokens"] == len(expected)


def test_adapters_change_the_output(server):
    texts = {name: complete(server, name, PROMPTS[1])["choices"][0]["text"]
             for name in ("tiny", "ind", "pre")}
    assert len(set(texts.values())) == 3, texts


def test_batched_across_adapters_equals_generate_alone(server, served):
    """Eight concurrent requests over the base and three adapters, with prompts of different lengths
    and different max_tokens, share decode steps; each equals its own offline generate."""
    jobs = [(name, PROMPTS[i % len(PROMPTS)], 6 + 3 * (i % 3))
            for i, name in enumerate(["ind", "mix", "pre", None, "pre", "ind", "mix", None])]
    before = _batch_steps(server)

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[
                client.post(f"{server.url}/v1/completions",
                            json={"model": name or "tiny", "prompt": prompt, "max_tokens": tokens,
                                  "temperature": 0, "return_token_ids": True})
                for name, prompt, tokens in jobs])

    responses = asyncio.run(run())
    for (name, prompt, tokens), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()["choices"][0]["token_ids"]
        assert got == offline_tokens(served, name, prompt_ids(served, prompt), tokens), (name, prompt)
    steps, rows = _batch_steps(server)
    assert (rows - before[1]) / (steps - before[0]) > 2  # the requests did share steps


def _batch_steps(server) -> tuple[float, float]:
    """(decode steps, sequences over all steps) from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith(("inducer_batch_size_count", "inducer_batch_size_sum")))
    return float(values.get("inducer_batch_size_count", 0)), float(values.get("inducer_batch_size_sum", 0))


def test_openai_client_completion_and_stream(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    whole = client.completions.create(model="mix", prompt=PROMPTS[2], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="mix", prompt=PROMPTS[2], max_tokens=10, temperature=0,
                                            stream=True))
    assert len(chunks) > 2  # token by token
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list().data] == ["tiny", "ind", "mix", "pre"]


def test_chat_uses_the_template_and_streams_the_same(server, served):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "is the food good"}]
    whole = client.chat.completions.create(model="ind", messages=messages, max_tokens=8, temperature=0)
    _, tokenizer = load_base(served["base"])
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = offline_tokens(served, "ind", tokenizer(text, add_special_tokens=False)["input_ids"], 8)
    assert whole.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="ind", messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole.choices[0].message.content


def test_seeded_sampling_repeats_and_n_choices(server):
    body = {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 1.5, "seed": 7, "n": 3}
    first = complete(server, "pre", **body)
    again = complete(server, "pre", **body)
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    assert len(first["choices"]) == 3 and [c["index"] for c in first["choices"]] == [0, 1, 2]


def test_stop_strings_end_the_text(server):
    full = complete(server, "mix", PROMPTS[1], max_tokens=12)["choices"][0]["text"]
    word = full.split()[1]
    stopped = complete(server, "mix", PROMPTS[1], max_tokens=12, stop=[word])["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == full[: full.index(word)]
    body = {"model": "mix", "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "stop": word}
    chunks = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": True})
    events = [line[6:] for line in chunks.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == stopped["text"]


def test_metrics_and_structured_request_logs(server):
    answer = complete(server, "pre", PROMPTS[3], max_tokens=5)
    text = httpx.get(f"{server.url}/metrics").text
    for series in ('inducer_requests_total{adapter="pre",endpoint="completions",status="200"}',
                   'inducer_completion_tokens_total{adapter="pre"}',
                   'inducer_prompt_tokens_total{adapter="pre"}',
                   'inducer_request_seconds_count{adapter="pre",endpoint="completions"}',
                   "inducer_batch_size_count", "inducer_sequences_active"):
        assert series in text, series
    logged = [json.loads(line.split("inducer.serve.requests INFO ", 1)[1])
              for line in server.output().splitlines() if "inducer.serve.requests INFO " in line]
    entry = next(e for e in logged if e["id"] == answer["id"])
    assert entry["model"] == "pre" and entry["status"] == 200 and entry["completion_tokens"] == 5
    assert entry["latency_ms"] > 0 and entry["finish_reasons"] == ["length"]
