"""The ``inducer serve`` command's options (registered on the CLI by ``inducer.cli``)."""

from __future__ import annotations

from typing import Annotated

import typer

_LIMITS = "Request limits"


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
    base_name: Annotated[
        str | None, typer.Option("--base-name", help="the base model's name in requests (default: --model)")
    ] = None,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", rich_help_panel=_LIMITS)] = 2048,
    max_tokens: Annotated[int, typer.Option("--max-tokens", rich_help_panel=_LIMITS)] = 512,
    max_n: Annotated[int, typer.Option("--max-n", rich_help_panel=_LIMITS)] = 8,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", rich_help_panel=_LIMITS)] = 1 << 20,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, ... (default: cuda if any)")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="seconds SIGTERM waits for requests in flight")
    ] = 300.0,
) -> None:
    """Serve a base model and its adapters over an OpenAI-compatible HTTP API (completions, chat,
    models, classify), batching requests for different adapters into shared forward passes."""
    from ..cli_errors import guard
    from .protocol import Limits
    from .server import ServeOptions, parse_adapters, run

    def body():
        limits = Limits(max_prompt_tokens, max_tokens, max_n, max_body_bytes)
        adapters = parse_adapters(adapter or [])
        run(ServeOptions(model, adapters, host, port, api_key, max_batch_size, max_wait_ms, adapter_root,
                         limits, device, drain_timeout, base_name))  # fmt: skip

    guard(body)
