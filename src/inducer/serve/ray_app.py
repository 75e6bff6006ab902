"""Replicas on Ray Serve: ``inducer serve --ray --replicas N`` (``pip install 'inducer[ray]'``).

Two deployments behind Ray Serve's HTTP proxy, at one address:

* ``Ingress`` (one, no model): reads the request's body (bounded), takes its ``model`` (or the
  ``serve_multiplexed_model_id`` header) and forwards the request through a deployment handle with
  ``multiplexed_model_id=model``, so that Ray's router sends it to a replica that already holds the
  adapter (then the least loaded). A replica that dies before answering is retried on another
  (up to ``ATTEMPTS``), else the client gets a 503 that says so. Nothing is retried once a byte went
  to the client.
* ``InducerReplica`` (N): today's server in full (engine, scheduler with continuous batching across
  adapters, adapter store, gate with the API key and the bounded queue), run in process as an ASGI
  app. Its ``@serve.multiplexed`` loader loads store adapters, which tells Ray what it holds; Ray's
  LRU (``max_num_models_per_replica = --max-adapters``) mirrors the store's own. Every response
  carries ``x-inducer-replica`` (the replica's id), so clients and tests can see the routing.

Cross-adapter batching stays inside each replica's scheduler (``@serve.batch`` would split batches
by model id). Ray is imported only here: the server without ``--ray`` is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from ..errors import ConfigError
from .protocol import ServeError
from .server import ServeOptions

logger = logging.getLogger("inducer.serve")
ATTEMPTS = 3  # tries of one request on replicas that die before answering
REPLICA_HEADER = b"x-inducer-replica"


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ConfigError(f"inducer serve --ray needs Ray Serve ({err.name} is missing); install it with: "
                         "pip install 'inducer[ray]'") from err  # fmt: skip
    return ray, serve


async def _asgi(app, method: str, path: str, query: bytes, headers: list, body: bytes) -> AsyncIterator[dict]:
    """Run one HTTP request through the ASGI ``app`` in process; its ``send`` messages. If the
    consumer stops early (the client left), the app hears ``http.disconnect``."""
    messages: asyncio.Queue = asyncio.Queue(maxsize=64)  # bounded: the app waits for the consumer
    disconnected = asyncio.Event()
    given = False

    async def receive() -> dict:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(scope, receive, messages.put)
        finally:
            await messages.put(None)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": "", "headers": [(bytes(k), bytes(v)) for k, v in headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}  # fmt: skip
    task = asyncio.get_running_loop().create_task(run())
    try:
        while (message := await messages.get()) is not None:
            yield message
    finally:
        disconnected.set()
        if not task.done():  # let it finish its cancellation; drain so that it never blocks on put
            while not task.done():
                try:
                    await asyncio.wait_for(messages.get(), 1.0)
                except TimeoutError:
                    continue


class InducerReplica:
    """One replica: the whole single-process server (see :func:`inducer.serve.server.run`)."""

    def __init__(self, options: ServeOptions, threads: int = 1, slow_load: tuple[str, float] | None = None):
        import torch

        from .app import Service, build_app
        from .engine import Engine
        from .metrics import Metrics
        from .scheduler import Scheduler
        from .server import default_base_name
        from .store import AdapterStore

        _, serve = _ray()
        torch.set_num_threads(threads)  # replicas share the machine's cores
        self.engine = Engine.load(options.model, options.adapters, options.adapter_root,
                                  device=options.device, limits=options.limits,
                                  base_name=options.base_name or default_base_name(options.model))
        self.metrics = Metrics()
        self.scheduler = Scheduler(self.engine, self.metrics, options.max_batch_size, options.max_wait_ms)
        self.store = None
        if options.adapter_store is not None:
            self.store = AdapterStore(options.adapter_store, self.engine, self.scheduler, self.metrics,
                                      options.limits.max_adapters)  # fmt: skip
        self.scheduler.start()
        self.gate = build_app(Service(self.engine, self.scheduler, self.metrics, options.limits, self.store),
                              options.api_key)  # fmt: skip
        self.id = serve.get_replica_context().replica_id.to_full_id_str().encode()
        # Fault injection for tests: loads of names with this prefix take this long (a replica is
        # killed in the middle of one).
        self.slow_load = slow_load
        self.loading = 0

    async def _load_adapter(self, model_id: str) -> str:
        """Ray's multiplexed loader: load ``model_id`` from the store (a ServeError if it cannot)."""
        self.loading += 1
        self.metrics.gauge("inducer_replica_loads_in_progress", "Adapter loads running on this replica",
                           self.loading)  # fmt: skip
        try:
            if self.slow_load is not None and model_id.startswith(self.slow_load[0]):
                await asyncio.sleep(self.slow_load[1])
            self.store.release(await self.store.acquire(model_id))
        finally:
            self.loading -= 1
            self.metrics.gauge("inducer_replica_loads_in_progress", "Adapter loads running on this "
                               "replica", self.loading)  # fmt: skip
        return model_id

    async def handle(self, method: str, path: str, query: bytes, headers: list, body: bytes):
        """One HTTP request: a dict (status, headers), then the body's chunks (bytes)."""
        _, serve = _ray()
        model = serve.get_multiplexed_model_id()
        if model and self.store is not None and model != self.engine.base_name and (
            self.store.manages(model) or model not in self.scheduler.adapters()
        ):
            try:
                await self.get_adapter(model)
            except ServeError as err:
                payload = json.dumps(err.body()).encode()
                yield {"status": err.status, "headers": [(b"content-type", b"application/json"),
                                                          (REPLICA_HEADER, self.id)]}  # fmt: skip
                yield payload
                return
        async for message in _asgi(self.gate, method, path, query, headers, body):
            if message["type"] == "http.response.start":
                yield {"status": message["status"], "headers": [*message.get("headers", []),
                                                                (REPLICA_HEADER, self.id)]}  # fmt: skip
            elif message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]

    def check_health(self) -> None:
        """Ray's health check: a dead model worker makes Ray replace this replica."""
        if not self.scheduler.alive():
            raise RuntimeError("the model's worker thread died")

    def __del__(self) -> None:
        if getattr(self, "scheduler", None) is not None and self.scheduler.alive():
            self.scheduler.stop()


class Ingress:
    """The one HTTP entry: routes each request to a replica by its adapter (see the module doc)."""

    def __init__(self, replicas, max_body_bytes: int):
        self.replicas, self.max_body_bytes = replicas, max_body_bytes

    async def __call__(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        ray, _ = _ray()
        try:
            body = await self._body(request)
        except ServeError as err:
            return JSONResponse(err.body(), err.status)
        model = _model_of(body) or request.headers.get("serve_multiplexed_model_id", "")
        call = (request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body)
        failure = None
        for attempt in range(ATTEMPTS):
            stream = self.replicas.options(stream=True, multiplexed_model_id=model).handle.remote(*call)
            try:
                start = await stream.__anext__()
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                failure = err  # the replica died before answering: nothing was sent, try another
                logger.warning("replica failed before answering (%s); attempt %d of %d",
                               type(err).__name__, attempt + 1, ATTEMPTS)  # fmt: skip
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            headers = {k.decode(): v.decode() for k, v in start["headers"] if k.lower() != b"content-length"}
            return StreamingResponse(_rest(stream), start["status"], headers)
        error = ServeError(503, f"the replica serving this request failed {ATTEMPTS} times "
                           f"({type(failure).__name__}); retry in a moment")  # fmt: skip
        return JSONResponse(error.body(), 503)

    async def _body(self, request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise ServeError(400, f"request body over {self.max_body_bytes} bytes; send a smaller one")
        return bytes(body)


def _model_of(body: bytes) -> str:
    """The ``model`` of a JSON body ("" if none): the key Ray routes by. The replica parses the body
    strictly; this only picks a replica."""
    try:
        model = json.loads(body).get("model") if body else None
    except (ValueError, AttributeError):
        return ""
    return model if isinstance(model, str) and len(model) <= 256 else ""


async def _rest(stream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as err:  # the replica died mid-answer: the client sees a truncated response
        logger.warning("replica failed while answering (%s)", type(err).__name__)


def build(options: ServeOptions, replicas: int = 2, threads: int = 1,
          slow_load: tuple[str, float] | None = None):  # fmt: skip
    """The Ray Serve application: the ingress and ``replicas`` inducer replicas."""
    _, serve = _ray()
    max_models = options.limits.max_adapters

    class Replica(InducerReplica):
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_adapter(self, model_id: str) -> str:
            return await self._load_adapter(model_id)

    Replica.__name__ = Replica.__qualname__ = "InducerReplica"
    replica = serve.deployment(Replica, name="InducerReplica", num_replicas=replicas,
                               max_ongoing_requests=options.limits.max_queue,
                               ray_actor_options={"num_cpus": 0})  # fmt: skip
    ingress = serve.deployment(Ingress, name="Ingress",
                               max_ongoing_requests=options.limits.max_queue * replicas,
                               ray_actor_options={"num_cpus": 0})  # fmt: skip
    options = replace(options, adapters=dict(options.adapters))
    return ingress.bind(replica.bind(options, threads, slow_load), options.limits.max_body_bytes)


def app_builder(args: dict):
    """For ``serve run inducer.serve.ray_app:app_builder model=DIR adapter_store=DIR replicas=2``."""
    options = ServeOptions(args["model"], adapter_store=args.get("adapter_store"),
                           base_name=args.get("base_name"), device=args.get("device"))  # fmt: skip
    return build(options, int(args.get("replicas", 2)), int(args.get("threads", 1)))


def run(options: ServeOptions, replicas: int, threads: int = 1) -> None:
    """``inducer serve --ray``: a local Ray cluster (or the one ``RAY_ADDRESS`` names), the app on
    ``--host``/``--port``, until SIGTERM / SIGINT; then Ray Serve drains and shuts down."""
    import signal
    import threading

    ray, serve = _ray()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build(options, replicas, threads), name="inducer", route_prefix="/")
    logger.info("serving %s on http://%s:%d with %d Ray Serve replicas", options.model, options.host,
                options.port, replicas)  # fmt: skip
    stop.wait()
    logger.info("stopping: Ray Serve drains the requests in flight")
    serve.shutdown()
    ray.shutdown()


__all__ = ["Ingress", "InducerReplica", "app_builder", "build", "run"]
