"""The HTTP API (FastAPI): OpenAI-compatible completions, chat, models; classify; adapters admin;
health and metrics. Generation runs on the scheduler's worker thread; a request's side of it (its
sequences, its answer or event stream) is :mod:`inducer.serve.generation`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError

from .decoding import Sampling
from .engine import Engine
from .gate import Gate
from .generation import Generation
from .metrics import Metrics
from .protocol import (
    AdapterRequest,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    Limits,
    ServeError,
    validation_message,
)
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .store import AdapterStore

request_log = logging.getLogger("inducer.serve.requests")
T = TypeVar("T")
CHARS_PER_TOKEN = 64  # a generous bound: tokens of real tokenizers are far shorter


class Service:
    """What the endpoints share: the engine, scheduler, metrics, limits and the adapter store."""

    def __init__(self, engine: Engine, scheduler: Scheduler, metrics: Metrics, limits: Limits,
                 store: AdapterStore | None = None):  # fmt: skip
        self.engine, self.scheduler, self.metrics, self.limits = engine, scheduler, metrics, limits
        self.store = store
        # Tokenising a long prompt takes milliseconds: never on the event loop. One thread, because
        # a fast tokenizer must not be used by two threads at once (the worker has its own copy).
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="inducer-tokenizer")

    async def tokenize(self, fn: Callable[[], T]) -> T:
        """``fn()`` (which tokenises) on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, fn)

    def check_length(self, text: str | list[int], param: str) -> None:
        """Refuse, before tokenising it, a text that cannot fit ``max_prompt_tokens`` (a token is
        rarely over ``CHARS_PER_TOKEN`` characters), or a token-id prompt over the limit."""
        limit = self.limits.max_prompt_tokens
        if isinstance(text, list):
            if len(text) > limit:
                raise ServeError(
                    400, f"the prompt has {len(text)} tokens; this server allows at most {limit}", param=param
                )
            return
        if len(text) > limit * CHARS_PER_TOKEN:
            raise ServeError(
                400,
                f"{param} has {len(text)} characters; this server allows prompts of at most {limit} tokens "
                f"({limit * CHARS_PER_TOKEN} characters); send a shorter one",
                param=param,
            )

    async def resolve(self, model: str) -> tuple[str | None, object | None]:
        """The adapter a request's ``model`` names (None: the base) and its pin in the adapter store
        (None if not from the store), loading it from the store if need be; 404 for an unknown
        name. Give the pin back to ``unpin`` once the request's sequences are submitted."""
        if self.store is not None and model != self.engine.base_name and (
            self.store.manages(model) or model not in self.scheduler.adapters()
        ):
            return model, await self.store.acquire(model)
        return self.adapter_for(model), None

    def unpin(self, pin: object | None) -> None:
        """Give back a pin from ``resolve`` (the scheduler counts the submitted sequences)."""
        if pin is not None and self.store is not None:
            self.store.release(pin)

    def adapter_for(self, model: str) -> str | None:
        """The loaded adapter a request's ``model`` names (None: the base); 404 for an unknown name."""
        if model == self.engine.base_name:
            return None
        if model in self.scheduler.adapters():
            return model
        known = [self.engine.base_name, *self.scheduler.adapters()]
        raise ServeError(
            404,
            f"model {model!r} does not exist; GET /v1/models lists {known}",
            param="model",
            code="model_not_found",
        )

    def sampling(self, body, max_tokens: int | None, prompt_tokens: int) -> Sampling:
        """The request's sampling options, checked against the limits and the model's positions."""
        limits = self.limits
        if body.n > limits.max_n:
            raise ServeError(400, f"n is {body.n}; this server allows at most {limits.max_n}", param="n")
        if prompt_tokens > limits.max_prompt_tokens:
            raise ServeError(
                400,
                f"the prompt has {prompt_tokens} tokens; this server allows at most "
                f"{limits.max_prompt_tokens}",
                param="prompt",
            )
        if prompt_tokens == 0:
            raise ServeError(400, "the prompt is empty after tokenisation; give some text", param="prompt")
        positions = self.engine.max_positions
        room = limits.max_tokens if positions is None else min(limits.max_tokens, positions - prompt_tokens)
        tokens = max_tokens if max_tokens is not None else room
        if tokens > room or room < 1:
            raise ServeError(
                400,
                f"max_tokens is {tokens}; with a {prompt_tokens}-token prompt this server "
                f"allows at most {max(room, 0)} (the limit {limits.max_tokens}, the model's "
                f"{positions} positions)",
                param="max_tokens",
            )
        return Sampling(tokens, body.temperature, body.top_p, body.stop_strings(), body.seed)

    def record(self, endpoint: str, adapter: str | None, status: int, started: float, **fields) -> None:
        """Count the request in the metrics and write its structured log line."""
        name = adapter or self.engine.base_name
        seconds = time.perf_counter() - started
        self.metrics.count(
            "inducer_requests_total", "Requests answered", endpoint=endpoint, adapter=name, status=str(status)
        )
        self.metrics.observe(
            "inducer_request_seconds", "Request latency", seconds, endpoint=endpoint, adapter=name
        )
        for kind in ("prompt_tokens", "completion_tokens"):
            if fields.get(kind):
                self.metrics.count(
                    f"inducer_{kind}_total",
                    f"{kind.replace('_', ' ').capitalize()}",
                    fields[kind],
                    adapter=name,
                )
        request_log.info(
            json.dumps(
                {
                    "endpoint": endpoint,
                    "model": name,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 2),
                    **fields,
                }
            )
        )


async def _read(request: Request, model: type[BaseModel], limit: int):
    """The body parsed as ``model``; 400 past ``limit`` bytes (like every request limit), for invalid
    JSON or for invalid fields."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServeError(400, f"request body over {limit} bytes; send a smaller request")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as err:
        message, param = validation_message(err.errors())
        raise ServeError(400, message, param=param) from err


def build_app(service: Service, api_key: str | None) -> Gate:
    """The ASGI application: the FastAPI routes behind the :class:`Gate`."""
    app = FastAPI(title="inducer serve", docs_url=None, redoc_url=None, openapi_url=None)
    engine, limits = service.engine, service.limits

    @app.exception_handler(ServeError)
    async def _serve_error(_request: Request, err: ServeError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception):
        # A bug of ours: its traceback goes to the server's log; the client learns only that it
        # happened (an exception's text may hold the server's paths).
        incident = uuid.uuid4().hex[:12]
        logging.getLogger("inducer.serve").exception("request failed (incident %s)", incident)
        return JSONResponse(
            ServeError(500, f"internal error ({type(err).__name__}); the server log has incident "
                       f"{incident}; please report it").body(), 500,
        )  # fmt: skip

    @app.get("/health")
    async def health():
        # Open to anyone (load balancers): up or down, nothing about the model or its adapters.
        if gate.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not service.scheduler.alive():
            return JSONResponse({"status": "down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        service.metrics.gauge(
            "inducer_sequences_active", "Sequences waiting or running", service.scheduler.running()
        )
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        base = {"id": engine.base_name, "object": "model", "created": 0, "owned_by": "inducer"}
        rows = [base] + [
            {**base, "id": name, "parent": engine.base_name} for name in service.scheduler.adapters()
        ]
        return {"object": "list", "data": rows}

    def _generation_only():
        if engine.kind != "generation":
            raise ServeError(
                400, f"the base model {engine.base_name!r} is a {engine.kind} model; use /v1/classify"
            )

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _read(request, CompletionRequest, limits.max_body_bytes)
        _generation_only()
        prompts = body.prompts()
        if len(prompts) > limits.max_inputs:
            raise ServeError(
                400, f"{len(prompts)} prompts; this server allows at most {limits.max_inputs}", param="prompt"
            )
        for prompt in prompts:
            service.check_length(prompt, "prompt")
        adapter, pin = await service.resolve(body.model)
        try:  # the pin keeps the adapter loaded until the scheduler counts the request's sequences
            encoded = await service.tokenize(lambda: [engine.encode(p) for p in prompts])
            generation = Generation(service, False, body, adapter, encoded, body.max_tokens)
            return generation.stream() if body.stream else await generation.answer(request)
        finally:
            service.unpin(pin)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _read(request, ChatRequest, limits.max_body_bytes)
        _generation_only()
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        service.check_length("".join(m["content"] for m in messages), "messages")
        adapter, pin = await service.resolve(body.model)
        try:
            prompt = await service.tokenize(lambda: engine.chat_prompt(messages))
            generation = Generation(service, True, body, adapter, [prompt], body.token_limit())
            return generation.stream() if body.stream else await generation.answer(request)
        finally:
            service.unpin(pin)

    @app.post("/v1/classify")
    async def classify(request: Request):
        started = time.perf_counter()
        body = await _read(request, ClassifyRequest, limits.max_body_bytes)
        if engine.kind != "classification":
            raise ServeError(400, f"the base model {engine.base_name!r} generates text; use /v1/completions")
        texts = body.texts()
        if len(texts) > limits.max_inputs:
            raise ServeError(
                400, f"{len(texts)} inputs; this server allows at most {limits.max_inputs}", "input"
            )
        for text in texts:
            service.check_length(text, "input")
        adapter, pin = await service.resolve(body.model)
        try:
            results = await asyncio.wrap_future(
                service.scheduler.call(lambda: engine.classify(texts, adapter)))  # fmt: skip
        finally:
            service.unpin(pin)
        service.record("classify", adapter, 200, started, inputs=len(texts))
        return {
            "object": "list",
            "model": body.model,
            "data": [{"index": i, **result} for i, result in enumerate(results)],
        }

    def _admin_allowed():
        if engine.adapter_root is None:
            raise ServeError(
                403,
                "adapter management over HTTP is off; start the server with --adapter-root DIR to load "
                "and delete adapters in folders under DIR",
                code="adapter_admin_disabled",
            )

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        _admin_allowed()
        body = await _read(request, AdapterRequest, limits.max_body_bytes)
        await asyncio.wrap_future(service.scheduler.call(lambda: engine.add_adapter(body.name, body.path)))
        return {"id": body.name, "object": "model", "parent": engine.base_name, "loaded": True}

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str):
        _admin_allowed()
        if name not in service.scheduler.adapters():
            raise ServeError(
                404,
                f"no adapter named {name!r}; GET /v1/models lists them",
                param="name",
                code="model_not_found",
            )
        pending = service.scheduler.delete_adapter(name)
        return {"id": name, "object": "model", "deleted": True, "finishing_sequences": pending}

    gate = Gate(app, api_key, limits.max_body_bytes, limits.max_queue)
    return gate
