"""The ``inducer serve`` command's options (registered on the CLI by ``inducer.cli.main``)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from ..errors import ConfigError

_LIMITS = "Request limits"


def check_ranges(**options: tuple[float, float, float]) -> None:
    """Each ``name=(value, low, high)``: a finite number in [low, high], else a one-line ValueError
    naming the option (the CLI prints it and exits 2)."""
    for name, (value, low, high) in options.items():
        if not (math.isfinite(value) and low <= value <= high):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is {value}; give a number from {low:g} to {high:g}")


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="base model: hub id, folder or shortcut")],
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", "-a", help="NAME=DIR: serve the adapter in DIR as model NAME (repeatable)"),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="interface to listen on (0.0.0.0: every one)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="INDUCER_API_KEY",
            help="require 'Authorization: Bearer KEY' (all but /health)",
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="sequences per decode step")] = 16,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            "--max-wait-ms", help="when idle, how long the first request waits for others to batch with"
        ),
    ] = 5.0,
    adapter_root: Annotated[
        str | None, typer.Option("--adapter-root", help="POST /v1/adapters only loads folders under this one")
    ] = None,
    adapter_store: Annotated[
        str | None,
        typer.Option(
            "--adapter-store",
            help="DIR or hf://ORG/PREFIX: a request's model NAME loads DIR/NAME (or hub repo ORG/PREFIXNAME) "
            "on first use; the least recently used idle adapters are evicted past --max-adapters",
        ),
    ] = None,
    base_name: Annotated[
        str | None, typer.Option("--base-name", help="the base model's name in requests (default: --model)")
    ] = None,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", rich_help_panel=_LIMITS)] = 2048,
    max_tokens: Annotated[int, typer.Option("--max-tokens", rich_help_panel=_LIMITS)] = 512,
    max_n: Annotated[int, typer.Option("--max-n", rich_help_panel=_LIMITS)] = 8,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", rich_help_panel=_LIMITS)] = 1 << 20,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue", rich_help_panel=_LIMITS, help="requests in flight; more get 429 (retry later)"
        ),
    ] = 256,
    max_adapters: Annotated[
        int, typer.Option("--max-adapters", rich_help_panel=_LIMITS, help="adapters loaded at once")
    ] = 64,
    max_adapter_bytes: Annotated[
        int,
        typer.Option(
            "--max-adapter-bytes", rich_help_panel=_LIMITS, help="size of one adapter folder's files"
        ),
    ] = 1 << 30,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="allow a --host other than loopback without --api-key (anyone may use it)"
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, ... (default: cuda if any)")
    ] = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="serve through Ray Serve replicas routed by adapter (inducer[ray])"),
    ] = False,
    replicas: Annotated[int, typer.Option("--replicas", help="with --ray: how many replicas")] = 2,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="seconds SIGTERM waits for requests in flight")
    ] = 300.0,
) -> None:
    """Serve a base model and its adapters over an OpenAI-compatible HTTP API (completions, chat,
    models, classify), batching requests for different adapters into shared forward passes."""
    from ..serve.protocol import Limits
    from ..serve.server import ServeOptions, parse_adapters, run
    from .errors import guard

    def body():
        check_ranges(
            port=(port, 1, 65535), max_batch_size=(max_batch_size, 1, 4096),
            max_wait_ms=(max_wait_ms, 0, 60_000), drain_timeout=(drain_timeout, 0, 86_400),
            max_prompt_tokens=(max_prompt_tokens, 1, 1 << 20), max_tokens=(max_tokens, 1, 1 << 20),
            max_n=(max_n, 1, 128), max_body_bytes=(max_body_bytes, 1024, 1 << 30),
            max_queue=(max_queue, 1, 1 << 16), max_adapters=(max_adapters, 1, 4096),
            max_adapter_bytes=(max_adapter_bytes, 1, 1 << 40), replicas=(replicas, 1, 256),
        )  # fmt: skip
        limits = Limits(max_prompt_tokens, max_tokens, max_n, max_body_bytes, max_queue=max_queue,
                        max_adapters=max_adapters, max_adapter_bytes=max_adapter_bytes)  # fmt: skip
        adapters = parse_adapters(adapter or [])
        if len(adapters) > max_adapters:
            raise ConfigError(
                f"{len(adapters)} --adapter given, over --max-adapters {max_adapters}; raise it")
        if adapter_store is not None and adapter_root is not None:
            raise ConfigError("give --adapter-store or --adapter-root, not both: with a store, adapters "
                             "load on demand and are evicted when idle, so none is added by hand")
        options = ServeOptions(model, adapters, host, port, api_key, max_batch_size, max_wait_ms,
                               adapter_root, limits, device, drain_timeout, base_name, insecure,
                               adapter_store)  # fmt: skip
        if not ray:
            return run(options)
        if adapter_root is not None:
            raise ConfigError("--ray serves fixed adapters (--adapter) and a store (--adapter-store); "
                             "--adapter-root would add adapters to one replica only")
        from ..serve.ray_app import run as run_ray
        from ..serve.server import check_exposure

        check_exposure(host, api_key, insecure)
        run_ray(options, replicas)

    guard(body)
