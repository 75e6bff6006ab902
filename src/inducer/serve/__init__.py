"""``inducer serve``: one base model, many adapters, over an OpenAI-compatible HTTP API.

    inducer serve --model smollm2-135m --adapter e2e=runs/e2e/best --adapter dart=runs/dart/best

Requests name an adapter as their ``model`` (the base model's name: no adapter). Requests for
different adapters share forward passes through per-row routing (``inducer.route``), with
continuous batching (:mod:`inducer.serve.scheduler`). Modules: ``protocol`` (request bodies, limits,
errors), ``decoding`` (per-sequence KV caches, batched steps), ``engine`` (the model and its
adapters), ``scheduler`` (the worker thread), ``gate`` (auth, drain), ``app`` (the routes), ``generation``
(one request's sequences and answer),
``metrics``, ``server`` (start and SIGTERM drain), ``command`` (the CLI options).
"""

from __future__ import annotations

__all__ = ["ServeOptions", "run"]


def __getattr__(name: str):
    if name in __all__:  # imported on use: the CLI's start stays free of torch and FastAPI
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'inducer.serve' has no attribute {name!r}")
