"""The batching scheduler: one worker thread owns the model and runs continuous batching.

Each loop: run queued calls (adapter loads and deletes, classification), admit waiting sequences up
to ``max_batch_size`` (prefilled together in one pass), then one decode step for every running
sequence. A new request therefore joins at the next step and a finished one leaves at once; when
nothing runs, the first arrival waits up to ``max_wait_ms`` for others so that they start together.
The isolation rule (one request never changes another's result): a failing shared pass commits
nothing to any sequence (:class:`~inducer.serve.decoding.DecodeBatch`) and is retried one sequence at
a time; a failure after the pass (one row's sampling or text) fails that row alone. Batch-mates
therefore generate exactly what they would alone (``tests/serve/test_isolation.py`` injects
failures at each point and compares with solo runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future

from .decoding import DecodeBatch, Sequence, prefill
from .engine import Engine
from .metrics import BATCH_BUCKETS, Metrics
from .protocol import ServeError

logger = logging.getLogger("inducer.serve")


class Scheduler:
    """Runs sequences and calls on the model's worker thread."""

    def __init__(self, engine: Engine, metrics: Metrics, max_batch_size: int = 16, max_wait_ms: float = 5.0):
        self.engine, self.metrics = engine, metrics
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.batch = DecodeBatch(engine.model, engine.device)
        self._cond = threading.Condition()
        self._waiting: deque[tuple[float, Sequence]] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._running: list[Sequence] = []
        self._in_use: Counter[str | None] = Counter()  # waiting + running sequences per adapter
        self._deleting: set[str] = set()
        self._stopping = False
        self._started = False
        self.failure: BaseException | None = None  # what killed the worker thread, if anything did
        self._thread = threading.Thread(target=self._run, name="inducer-serve-worker", daemon=True)

    # --- called from the event loop ---------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def alive(self) -> bool:
        """Whether the worker thread runs (a dead worker would leave every request waiting)."""
        return self.failure is None and (self._thread.is_alive() or not self._started)

    def adapters(self) -> list[str]:
        """The adapters that accept new requests (not those being deleted)."""
        with self._cond:
            return [name for name in self.engine.adapter_names() if name not in self._deleting]

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences for generation (their ``on_update`` reports progress); 503 if the worker
        is dead."""
        now = time.perf_counter()
        with self._cond:
            self._check_alive()
            for seq in sequences:
                self._waiting.append((now, seq))
                self._in_use[seq.adapter] += 1
            self._cond.notify()

    def call(self, fn: Callable) -> Future:
        """Run ``fn()`` on the worker thread between steps; its result or error in the future."""
        future: Future = Future()
        with self._cond:
            self._check_alive()
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    def delete_adapter(self, name: str) -> int:
        """Refuse new requests for ``name`` and delete it once no sequence uses it (on the worker
        thread); the number of sequences still finishing on it."""
        with self._cond:
            self._deleting.add(name)
            pending = self._in_use[name]
        self.call(self._delete_if_unused)
        return pending

    def in_use(self, adapter: str) -> int:
        """Sequences waiting or running on ``adapter`` (the adapter store evicts only at 0)."""
        with self._cond:
            return self._in_use.get(adapter, 0)

    def running(self) -> int:
        """Sequences waiting or running."""
        with self._cond:
            return sum(self._in_use.values())

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise ServeError(503, "the server's model worker failed; it is shutting down: retry on another "
                             "replica or after it restarts")  # fmt: skip

    # --- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        """The worker: its loop, and if that ever raises (a bug of ours), every waiting request
        answered with an error instead of waiting forever; the server's watchdog then exits."""
        try:
            self._loop()
        except BaseException as err:
            logger.critical("the model worker thread died; the server will exit", exc_info=err)
            with self._cond:
                self.failure = err
                waiting = [seq for _, seq in self._waiting] + self._running
                calls = list(self._calls)
                self._waiting.clear()
                self._calls.clear()
                self._running = []
            for seq in waiting:
                if not seq.finished:
                    seq.fail(f"WorkerDied: {type(err).__name__}")
                try:
                    seq.on_update(seq)
                except Exception:
                    logger.exception("on_update failed")
            for _, future in calls:
                future.set_exception(ServeError(503, "the server's model worker failed; retry elsewhere"))

    def _next_work(self) -> tuple[list, list[Sequence]] | None:
        with self._cond:
            while not (self._waiting or self._calls or self._running or self._stopping):
                self._cond.wait()
            if self._stopping and not (self._waiting or self._calls or self._running):
                return None
            if not self._running and self._waiting and self.max_wait > 0:
                deadline = self._waiting[0][0] + self.max_wait
                while len(self._waiting) < self.max_batch_size and not self._calls:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            calls = list(self._calls)
            self._calls.clear()
            room = self.max_batch_size - len(self._running)
            admitted = [self._waiting.popleft()[1] for _ in range(min(room, len(self._waiting)))]
        return calls, admitted

    def _loop(self) -> None:
        while (work := self._next_work()) is not None:
            calls, admitted = work
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as err:  # the caller answers it; the worker goes on
                    future.set_exception(err)
            admitted = [s for s in admitted if not self._drop_cancelled(s)]
            if admitted:
                self._guarded(self._prefill, admitted)
            self._running = [s for s in self._running + admitted if not s.finished]
            if self._running:
                self._guarded(self._step, self._running)
                self._running = [s for s in self._running if not s.finished]
            if not self._running:
                self.batch.set_members([])  # frees the batch cache

    def _prefill(self, sequences: list[Sequence]) -> None:
        prefill(self.engine.model, sequences, self.engine.pad_id, self.engine.device)
        self._report(sequences)

    def _step(self, sequences: list[Sequence]) -> None:
        self.batch.set_members(sequences)
        self.batch.step()
        self.metrics.observe(
            "inducer_batch_size", "Sequences in each decode step", len(sequences), BATCH_BUCKETS
        )
        self._report(sequences)

    def _guarded(self, run: Callable[[list[Sequence]], None], sequences: list[Sequence]) -> None:
        try:
            run(sequences)
        except Exception as err:
            if len(sequences) > 1:  # find the culprit: each alone
                for seq in sequences:
                    self._guarded(run, [seq])
                return
            logger.exception("sequence failed")
            sequences[0].fail(f"{type(err).__name__}: {err}")
            self._report(sequences)

    def _report(self, sequences: list[Sequence]) -> None:
        for seq in sequences:
            if seq.cancelled and not seq.finished:
                seq.finish_reason = "cancelled"
            try:
                seq.on_update(seq)
            except Exception:  # a broken listener must not stop the worker
                logger.exception("on_update failed")
            if seq.finished:
                self._release(seq)

    def _drop_cancelled(self, seq: Sequence) -> bool:
        if seq.cancelled:
            seq.finish_reason = "cancelled"
            self._report([seq])  # its listener hears the end; its adapter is released
        return seq.cancelled

    def _release(self, seq: Sequence) -> None:
        with self._cond:
            self._in_use[seq.adapter] -= 1
            done = seq.adapter in self._deleting and self._in_use[seq.adapter] <= 0
        if done:
            self._delete_if_unused()

    def _delete_if_unused(self) -> None:
        with self._cond:
            ready = [n for n in self._deleting if self._in_use[n] <= 0]
        for name in ready:
            if name in self.engine.adapter_names():
                self.engine.remove_adapter(name)
                self.metrics.forget(adapter=name)
            with self._cond:
                self._deleting.discard(name)
                self._in_use.pop(name, None)
