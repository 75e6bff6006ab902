"""Adapters on demand: ``inducer serve --adapter-store DIR`` (or ``hf://ORG/PREFIX``).

A request's ``model`` that is neither the base nor a loaded adapter is looked up in the store: the
folder ``DIR/NAME`` (the store is an adapter root: the folder and every file in it must resolve
inside ``DIR``), or the hub repo ``ORG/PREFIXNAME`` through ``huggingface_hub.snapshot_download``
and its cache. The first request loads it; at most ``--max-adapters`` stay loaded, the least
recently used idle one is evicted to make room.

Rules this module keeps (those of the server):

* **Validated off the model thread, before anything changes.** Locating, downloading and checking
  the files (entries, sizes, symlinks, the config, SHA-256, dtypes, finite values, the base's
  fingerprint) run on a loader thread. Only the last step, ``Engine.add_adapter`` (which re-runs
  ``load_adapter``'s complete checks from the page cache, as the one gate that changes the model),
  runs on the model's worker thread. A refused adapter leaves the server as it was.
* **One load per adapter.** Concurrent first requests for a name share one load (single flight).
* **Never evict in use.** An adapter is pinned from the moment a request resolves it until its
  sequences are submitted (the scheduler then counts them until they finish); eviction picks only
  adapters with no pin and no sequence, and runs on the worker thread between steps.
* **Bounded.** Loaded adapters <= ``max_adapters`` (loads in progress hold a slot); loader threads
  are few; when every slot is pinned a request waits at most ``slot_wait_s``, then gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..runtime.adapter import check_adapter_name
from .engine import Engine
from .metrics import Metrics
from .protocol import ServeError
from .scheduler import Scheduler

logger = logging.getLogger("inducer.serve")
HUB_SCHEME = "hf://"
HUB_FILES = ["adapter_config.json", "adapter*.safetensors", "inducer_run.json"]  # nothing else is fetched
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class NotInStore(LookupError):
    """The store has no adapter of that name (answered 404)."""


@dataclass
class _Entry:
    """One adapter the store manages: loading (``ready`` unset) or loaded."""

    done: Future = field(default_factory=Future)  # set once the load finished (or failed)
    ready: bool = False
    slot: bool = False  # counts against max_adapters (from just before its add to its eviction)
    pins: int = 0  # requests that resolved it and have not submitted their sequences yet


def _preverify(engine: Engine, base: dict, folder: Path, path: str, root: Path) -> None:
    """Everything ``load_adapter`` checks that needs no change to the model, on a loader thread: the
    folder's entries (inside ``root``, regular files, sizes), the config, the weights' SHA-256,
    dtypes and finite values, the methods and the base's fingerprint."""
    from ..io.adapter_format import (
        AdapterFormatError,
        check_base,
        method_configs,
        read_config,
        read_tensors,
        weights_path,
    )
    engine.check_files(folder, path, root)
    try:
        config = read_config(folder)
        read_tensors(weights_path(folder), config, verify_checksum=True)
        check_base(config["base_model"], base, folder)  # the base's, taken at start (see __init__)
        method_configs(config, folder)
    except (AdapterFormatError, ValueError, KeyError, OSError) as err:
        message = str(err).replace(str(folder), path).replace(str(root), "<adapter-store>")
        raise ServeError(400, f"cannot load adapter {path!r} from the store: {message}", "model") from err


class AdapterStore:
    """Resolves request names to adapters, loading them on demand with LRU eviction."""

    def __init__(
        self,
        source: str,
        engine: Engine,
        scheduler: Scheduler,
        metrics: Metrics,
        max_adapters: int,
        slot_wait_s: float = 30.0,
        loader_threads: int = 2,
    ):
        self.source, self.engine, self.scheduler, self.metrics = source, engine, scheduler, metrics
        self.max_adapters, self.slot_wait_s = max_adapters, slot_wait_s
        self.hub_prefix = source[len(HUB_SCHEME):] if source.startswith(HUB_SCHEME) else None
        if self.hub_prefix is None:
            self.root = Path(source).expanduser().resolve()
            if not self.root.is_dir():
                raise ConfigError(f"--adapter-store {source} is not a folder; give an existing folder "
                                 f"or {HUB_SCHEME}ORG/PREFIX")  # fmt: skip
        elif "/" not in self.hub_prefix.strip("/"):
            raise ConfigError(f"--adapter-store {source}: write a hub store as {HUB_SCHEME}ORG/PREFIX "
                             f"(adapter NAME is the repo ORG/PREFIXNAME)")  # fmt: skip
        # Every field below is guarded by _lock (the event loop, loader and worker threads use it).
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loader = ThreadPoolExecutor(loader_threads, thread_name_prefix="inducer-adapter-loader")
        from ..io.base_identity import fingerprint

        # Once, before the worker starts: walking the live model's parameters on a loader thread
        # would race the worker attaching another adapter. Added parameters never change it.
        self.base_fingerprint = fingerprint(engine.model)
        self._evicting: set[str] = set()  # out of _entries, not yet removed by the worker
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "load_errors": 0, "evictions": 0}

    # --- requests (the event loop) ----------------------------------------------------------------
    def manages(self, name: str) -> bool:
        """Whether ``name`` is one of the store's adapters (loaded, loading, or being evicted: until
        the worker has removed it, the engine still lists it, and a request must not take it for a
        fixed adapter; it goes through ``acquire``, whose new load is queued after the removal)."""
        with self._lock:
            return name in self._entries or name in self._evicting

    async def acquire(self, name: str) -> _Entry:
        """Make ``name`` loaded and pin it; the pin, for ``release`` once the request's sequences
        are submitted (or it failed). A 404 if the store has no such adapter, a 400 if it is
        invalid, a 503 if no slot frees up in time."""
        with self._lock:
            entry = self._entries.get(name)
            hit = entry is not None and entry.ready
            self.stats["hits" if hit else "misses"] += 1
            if entry is None:
                entry = self._entries[name] = _Entry()
                self._tasks.add(task := asyncio.get_running_loop().create_task(self._load(name, entry)))
                task.add_done_callback(self._tasks.discard)  # a reference, so the task is not collected
            entry.pins += 1
            self._entries.move_to_end(name)
        self.metrics.count(f"inducer_adapter_cache_{'hits' if hit else 'misses'}_total",
                           f"Store lookups {'answered from memory' if hit else 'that needed a load'}")
        self._publish()
        if hit:
            return entry
        try:
            await asyncio.wrap_future(entry.done)
        except BaseException:
            self.release(entry)
            raise
        return entry

    def release(self, pin: _Entry) -> None:
        """Unpin (the pinned request's sequences, if any, are the scheduler's to count from now on).
        The entry itself, not its name: a failed or evicted entry may have a successor."""
        with self._lock:
            pin.pins -= 1

    # --- loading ----------------------------------------------------------------------------------
    async def _load(self, name: str, entry: _Entry) -> None:
        """Locate and verify off the model thread, take a slot (evicting), add on the worker."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            folder, root = await loop.run_in_executor(self._loader, self._locate, name)
            await loop.run_in_executor(self._loader, _preverify, self.engine, self.base_fingerprint,
                                       folder, name, root)
            await self._take_slot(name, entry)
            relative = str(folder.relative_to(root))
            await asyncio.wrap_future(self.scheduler.call(
                lambda: self.engine.add_adapter(name, relative, root=root)))  # fmt: skip
        except BaseException as err:
            with self._lock:
                self._entries.pop(name, None)  # the next request tries again (the store may change)
                self.stats["load_errors"] += 1
            self.metrics.count("inducer_adapter_loads_total", "Adapter loads from the store", result="error")
            if isinstance(err, NotInStore):
                err = ServeError(404, f"model {name!r} does not exist: it is neither the base, a loaded "
                                 "adapter, nor in the adapter store", param="model", code="model_not_found")
            elif not isinstance(err, ServeError):
                logger.exception("loading adapter %s from the store failed", name)
                err = ServeError(503, f"loading adapter {name!r} failed ({type(err).__name__}); retry later")
            entry.done.set_exception(err)
            self._publish()
            return
        seconds = time.perf_counter() - started
        with self._lock:
            entry.ready = True
            self.stats["loads"] += 1
        self.metrics.count("inducer_adapter_loads_total", "Adapter loads from the store", result="ok")
        self.metrics.observe("inducer_adapter_load_seconds", "Adapter load latency (locate, verify, add)",
                             seconds, LOAD_BUCKETS)  # fmt: skip
        logger.info("loaded adapter %s on demand in %.1f ms", name, seconds * 1000)
        entry.done.set_result(None)
        self._publish()

    def _locate(self, name: str) -> tuple[Path, Path]:
        """(the adapter's folder, the root it must lie in); NotInStore if there is none."""
        try:
            check_adapter_name(name)
        except ValueError as err:
            raise NotInStore(name) from err
        if self.hub_prefix is not None:
            return _from_hub(self.hub_prefix + name)
        folder = (self.root / name).resolve()
        if not folder.is_relative_to(self.root) or not folder.is_dir():
            raise NotInStore(name)
        return folder, self.root

    async def _take_slot(self, name: str, entry: _Entry) -> None:
        """Count ``entry`` against ``max_adapters``, first evicting the least recently used idle
        adapter if all slots are taken; waits (bounded) while every loaded adapter is in use."""
        deadline = time.monotonic() + self.slot_wait_s
        while True:
            with self._lock:
                fixed = len(set(self.engine.adapter_names()) - set(self._entries) - self._evicting)
                taken = fixed + sum(e.slot for e in self._entries.values())
                victim = None
                if taken >= self.max_adapters:
                    idle = (n for n, e in self._entries.items()
                            if e.ready and e.pins == 0 and self.scheduler.in_use(n) == 0)  # fmt: skip
                    victim = next(idle, None)
                    if victim is not None:
                        # Gone from the map at once: a new request for it starts a new load, whose
                        # add is queued on the worker after this removal.
                        del self._entries[victim]
                        self._evicting.add(victim)
                        self.stats["evictions"] += 1
                if taken < self.max_adapters or victim is not None:
                    entry.slot = True
                    break
            if time.monotonic() >= deadline:
                raise ServeError(503, f"all {self.max_adapters} adapter slots (--max-adapters) are used by "
                                 "requests in flight; retry in a moment")  # fmt: skip
            await asyncio.sleep(0.05)  # pins and sequences end on other threads: poll, bounded
        if victim is not None:
            self.scheduler.call(lambda: self._evict(victim))
            self._publish()

    def _evict(self, name: str) -> None:
        """On the worker thread: delete ``name`` (no pin, no sequence: checked when it was chosen,
        and nothing can use it since, being out of the map) and its metrics series."""
        try:
            if name in self.engine.adapter_names():
                self.engine.remove_adapter(name)
                self.metrics.forget(adapter=name)
        finally:
            with self._lock:
                self._evicting.discard(name)
        self.metrics.count("inducer_adapter_evictions_total", "Adapters evicted from memory (LRU)")
        logger.info("evicted adapter %s (least recently used)", name)

    def _publish(self) -> None:
        with self._lock:
            hits, misses = self.stats["hits"], self.stats["misses"]
            resident = sum(e.ready for e in self._entries.values())
        self.metrics.gauge("inducer_adapter_cache_hit_ratio", "Store lookups that found the adapter "
                           "loaded", hits / (hits + misses) if hits + misses else 0.0)  # fmt: skip
        self.metrics.gauge("inducer_adapters_resident", "Store adapters loaded now", resident)

    def close(self) -> None:
        """Stop the loader threads (loads in progress finish)."""
        self._loader.shutdown(wait=False, cancel_futures=True)


def _from_hub(repo_id: str) -> tuple[Path, Path]:
    """A hub repo's snapshot through ``huggingface_hub``'s cache (offline with HF_HUB_OFFLINE=1:
    only what is cached). The root is the repo's cache folder: snapshot files link to its blobs."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - transformers brings huggingface_hub
        raise ServeError(503, "the hub store needs huggingface_hub") from err
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, LocalEntryNotFoundError,
            ValueError) as err:  # fmt: skip  # ValueError: not a valid repo id
        raise NotInStore(repo_id) from err
    folder = folder.resolve()
    return folder, folder.parent.parent  # .../models--ORG--NAME/snapshots/REVISION


__all__ = ["HUB_SCHEME", "AdapterStore", "NotInStore"]
