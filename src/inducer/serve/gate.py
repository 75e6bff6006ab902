"""The ASGI layer in front of every endpoint: API key, draining, body size, in-flight count.

Written as plain ASGI around the whole app, so a streamed response counts as in flight until its
last byte is sent: SIGTERM waits for exactly those.
"""

from __future__ import annotations

import hmac
import json
import threading

from .protocol import ServeError

OPEN_PATHS = ("/health",)  # answered without the API key (load balancers probe it)
UNQUEUED_PATHS = ("/health", "/metrics")  # no work: answered even when the queue is full


class Gate:
    """Wraps the app: refuses unauthorised (401), oversized (400, like the other limits), past
    ``max_in_flight`` (429: the bounded queue) and, while draining, new (503) requests, and counts the
    requests in flight."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, max_in_flight: int = 256):
        self.app, self.max_body_bytes, self.max_in_flight = app, max_body_bytes, max_in_flight
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self.draining = False
        self._lock = threading.Lock()
        self.in_flight = 0
        self.idle = threading.Event()
        self.idle.set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if self.draining and path not in OPEN_PATHS:
            return await _refuse(
                send,
                ServeError(503, "the server is shutting down; retry on another replica or after it restarts"),
            )
        if self._key is not None and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._key):  # constant time: no key prefix leaks
                return await _refuse(
                    send,
                    ServeError(
                        401,
                        "missing or wrong API key; send the header "
                        "'Authorization: Bearer KEY' with the server's "
                        "--api-key",
                        code="invalid_api_key",
                    ),
                )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _refuse(
                send,
                ServeError(400, f"request body over {self.max_body_bytes} bytes; send a smaller request"),
            )
        if path in UNQUEUED_PATHS:
            return await self.app(scope, receive, send)
        if not self._enter():
            return await _refuse(
                send,
                ServeError(429, f"the server has {self.max_in_flight} requests in flight, its --max-queue; "
                           "retry in a moment (or on another replica)"),
                [(b"retry-after", b"1")],
            )  # fmt: skip
        try:  # a streamed response returns from the app after its last byte
            await self.app(scope, receive, send)
        finally:
            self._leave()

    def _enter(self) -> bool:
        """Count a request in; False (counting nothing) when ``max_in_flight`` are in flight."""
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            self.idle.clear()
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


async def _refuse(send, error: ServeError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *(headers or [])],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})
