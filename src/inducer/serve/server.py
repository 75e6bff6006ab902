"""Starting the server: load the model and adapters, start the worker, run uvicorn, drain on SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .protocol import Limits

logger = logging.getLogger("inducer.serve")


@dataclass
class ServeOptions:
    """Everything ``inducer serve`` takes."""

    model: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    adapter_root: str | None = None
    limits: Limits = field(default_factory=Limits)
    device: str | None = None
    drain_timeout: float = 300.0
    base_name: str | None = None  # what requests call the base model (default: see ``default_base_name``)
    insecure: bool = False  # allow a non-loopback interface without an API key
    adapter_store: str | None = None  # DIR or hf://ORG/PREFIX: adapters loaded on demand (LRU)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (only this machine can connect)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without an API key, unless ``--insecure`` says so."""
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty; give a long random key (e.g. from `openssl rand -hex 32`)")
    if not is_loopback(host) and api_key is None and not insecure:
        raise ConfigError(
            f"--host {host} accepts connections from other machines: give --api-key KEY (or set "
            "INDUCER_API_KEY), or pass --insecure to serve without one"
        )


def default_base_name(model: str) -> str:
    """What requests call the base by default: ``--model`` as given, but a local folder by its last
    part only (clients never learn the server's paths)."""

    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """``["NAME=DIR", ...]`` as a dict; a ValueError naming a malformed or repeated entry."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(
                f"--adapter {spec!r}: write it as NAME=DIR (e.g. --adapter sst2=runs/sst2/best)")
        if name in adapters:
            raise ConfigError(f"--adapter {name} is given twice; give each adapter one name")
        adapters[name] = folder
    return adapters


def _draining_server(config, gate, drain_timeout: float):
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, but the first SIGTERM / SIGINT drains: new requests get 503, those in flight
        finish, then it stops; a second signal exits at once (128 + the signal's number, like a
        process the signal killed), whatever is in flight."""

        def handle_exit(self, sig, frame) -> None:
            if gate.draining:
                logger.warning("second signal %s: exiting now, %d request(s) unanswered", sig, gate.in_flight)
                logging.shutdown()
                os._exit(128 + int(sig))
            gate.draining = True
            logger.info("signal %s: draining %d request(s) in flight, refusing new ones", sig, gate.in_flight)
            threading.Thread(target=self._exit_when_idle, daemon=True).start()

        def _exit_when_idle(self) -> None:
            gate.idle.wait(drain_timeout)
            self.should_exit = True

    return DrainingServer(config)


class WorkerDied(RuntimeError):
    """The model's worker thread died (a bug of ours): the server stopped."""


def _watchdog(server, scheduler, period: float = 0.5) -> threading.Thread:
    """A thread that stops ``server`` once the worker thread has died: ``/health`` already answers
    503, and the process exits non-zero so that its supervisor restarts it."""

    def watch() -> None:
        while not server.should_exit:
            if not scheduler.alive():
                logger.critical("the model worker is dead: stopping the server")
                server.should_exit = True
                return
            time.sleep(period)

    thread = threading.Thread(target=watch, name="inducer-serve-watchdog", daemon=True)
    thread.start()
    return thread


def _setup_logging() -> None:
    log = logging.getLogger("inducer.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run(options: ServeOptions) -> None:
    """Serve until SIGTERM / SIGINT (then drain)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ConfigError(f"inducer serve needs FastAPI and uvicorn ({err.name} is missing); install them "
                         "with: pip install 'inducer[serve]'") from err

    from .app import Service, build_app
    from .engine import Engine
    from .metrics import Metrics
    from .scheduler import Scheduler

    _setup_logging()
    check_exposure(options.host, options.api_key, options.insecure)
    if options.adapter_root is not None and not Path(options.adapter_root).expanduser().is_dir():
        raise ConfigError(f"--adapter-root {options.adapter_root} is not a folder; give an existing folder")
    store = options.adapter_store
    if store is not None and not store.startswith("hf://") and not Path(store).expanduser().is_dir():
        raise ConfigError(f"--adapter-store {store} is not a folder; give an existing folder or hf://ORG/PREFIX")
    if store is not None and store.startswith("hf://") and "/" not in store[5:].strip("/"):
        raise ConfigError(f"--adapter-store {store}: write a hub store as hf://ORG/PREFIX")
    if options.insecure and options.api_key is None and not is_loopback(options.host):
        for line in (
            f"--insecure: serving on {options.host} WITHOUT an API key.",
            "Anyone who can reach this port can generate with every adapter"
            + (" and load or delete adapters under --adapter-root." if options.adapter_root else "."),
            "Use --api-key (and TLS through a reverse proxy) for anything but a trusted network.",
        ):
            logger.warning("INSECURE: %s", line)
    engine = Engine.load(
        options.model,
        options.adapters,
        options.adapter_root,
        device=options.device,
        base_name=options.base_name or default_base_name(options.model),
        limits=options.limits,
    )
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, options.max_batch_size, options.max_wait_ms)
    store = None
    if options.adapter_store is not None:
        from .store import AdapterStore

        store = AdapterStore(options.adapter_store, engine, scheduler, metrics, options.limits.max_adapters)
    scheduler.start()
    gate = build_app(Service(engine, scheduler, metrics, options.limits, store), options.api_key)
    config = uvicorn.Config(
        gate,
        host=options.host,
        port=options.port,
        log_level="warning",
        timeout_graceful_shutdown=int(options.drain_timeout) + 1,
    )
    logger.info(
        "serving %s with adapters %s%s on http://%s:%d (batch <= %d, wait %g ms)",
        options.model,
        engine.adapter_names(),
        " and the adapter store" if store is not None else "",
        options.host,
        options.port,
        options.max_batch_size,
        options.max_wait_ms,
    )
    server = _draining_server(config, gate, options.drain_timeout)
    _watchdog(server, scheduler)
    try:
        server.run()
    finally:
        if store is not None:
            store.close()
        scheduler.stop()
    if scheduler.failure is not None:  # a bug of ours: its traceback, exit 1
        raise WorkerDied("the model's worker thread died (traceback above); the server stopped") from (
            scheduler.failure
        )
    logger.info("stopped")


__all__ = ["ServeOptions", "check_exposure", "default_base_name", "is_loopback", "parse_adapters", "run"]
