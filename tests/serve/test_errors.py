"""Bad requests get OpenAI-format errors (400 / 404) and the server never falls over (the API key's
401s are checked in test_lifecycle.py, against the keyed server it starts anyway)."""

from __future__ import annotations

import httpx
import openai
import pytest

GOOD = {"model": "ind", "prompt": "the food is", "max_tokens": 4, "temperature": 0}


@pytest.mark.parametrize(("change", "param"), [
    ({"prompt": None}, "prompt"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 41}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 9}, "n"),
    ({"prompt": "the " * 80}, "prompt"),
    ({"prompt": [10**6]}, "prompt"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"echo": True}, None),
    ({"top_p": 0}, "top_p"),
    ({"logit_bias": {"5": 100}}, "logit_bias"),
    ({"logprobs": 2}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"max_token": 5}, "max_token"),  # a misspelt field is not silently ignored
    ({"seed": 2**70}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"stop": "x" * 300}, "stop"),
    ({"prompt": "a" * (64 * 64 + 1)}, "prompt"),  # refused on its length, before tokenising
    ({"prompt": list(range(65))}, "prompt"),
])
def test_invalid_completion_requests_get_400(server, change, param):
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    neutral = {"logit_bias": {}, "logprobs": None, "presence_penalty": 0, "frequency_penalty": 0.0,
               "user": "u1", "seed": -5}  # fmt: skip
    response = httpx.post(f"{server.url}/v1/completions", json={**GOOD, **neutral})
    assert response.status_code == 200, response.text


def test_chat_refuses_what_it_would_drop(server):
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}, {"type": "text", "text": "hi"}]
    hi = [{"role": "user", "content": "hi"}]
    for messages, change in (([{"role": "user", "content": image}], {}),
                             ([{"role": "user", "content": "hi", "tool_calls": []}], {}),
                             (hi, {"tools": [{"type": "function"}]}),
                             (hi, {"response_format": {"type": "json_object"}})):
        body = {"model": "ind", "messages": messages, "max_tokens": 3, **change}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert response.status_code == 400, (messages, change, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_get_400(server, number):
    body = b'{"model": "ind", "prompt": "x", "max_tokens": 2, "temperature": ' + number + b"}"
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{server.url}/v1/completions", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", response.text


def test_unknown_model_is_404_for_every_client(server):
    response = httpx.post(f"{server.url}/v1/completions", json={**GOOD, "model": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_malformed_bodies(server):
    bad_json = httpx.post(f"{server.url}/v1/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    empty_chat = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "ind", "messages": []})
    assert empty_chat.status_code == 400 and empty_chat.json()["error"]["param"] == "messages"
    huge = httpx.post(f"{server.url}/v1/completions", content=b"x" * (1 << 20 + 1),
                      headers={"content-type": "application/json"})
    assert huge.status_code == 400 and "body" in huge.json()["error"]["message"]
    wrong_kind = httpx.post(f"{server.url}/v1/classify", json={"model": "ind", "input": "good"})
    assert wrong_kind.status_code == 400 and "/v1/completions" in wrong_kind.json()["error"]["message"]
    assert httpx.post(f"{server.url}/v1/completions", json=GOOD).status_code == 200  # still serving
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
