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


class Gate:
    """Wraps the app: refuses unauthorised (401), oversized (400, like the other limits) and, while
    draining, new (503) requests, and counts the requests in flight."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
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
        self._enter()
        try:  # a streamed response returns from the app after its last byte
            await self.app(scope, receive, send)
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.idle.clear()

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


async def _refuse(send, error: ServeError) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
