"""One job pool for every benchmark that runs many jobs: a deadline, worker processes, JSONL resume.

A job is a dict with a unique ``"id"``; a job function turns it into a row (a dict with the job's
keys, ``"error"`` set when it failed). A *plan* says which jobs are ready, in priority order, and
may queue more when a row comes back (a learning-rate choice opening the next stage):

    class Plan(Protocol):
        def pop(self) -> dict | None: ...       # the next ready job, or None
        def finish(self, row: dict) -> None: ... # a finished (or resumed) row
        def waiting(self) -> list[dict]: ...     # ready jobs not started yet

Every finished row is appended to the log as one JSON line as soon as it arrives, so a run that is
stopped or killed keeps its rows; a re-run with the same log skips the jobs logged without an
error (their rows are handed to the plan as if they had just finished) and runs the rest.
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import queue
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class Deadline:
    """Wall time since ``start`` against an optional deadline and a grace period after it."""

    def __init__(self, seconds: float | None = None, grace: float = 0.0, start: float | None = None):
        self.seconds, self.grace = seconds, grace
        self.start = time.perf_counter() if start is None else start

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds until the deadline (infinite without one; negative once it has passed)."""
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def may_start(self, expected: float = 0.0) -> bool:
        """Whether a job expected to take ``expected`` seconds may start: before the deadline, and
        expected to end before the deadline plus the grace period."""
        return self.left() > 0 and expected <= self.left() + self.grace

    def overrun(self) -> bool:
        """Whether the grace period after the deadline is over (running jobs are stopped)."""
        return self.left() + self.grace < 0


class JobList:
    """A plan of fixed jobs, run in the order given."""

    def __init__(self, jobs: list[dict]):
        self.ready = list(jobs)

    def pop(self) -> dict | None:
        """The next job, or None."""
        return self.ready.pop(0) if self.ready else None

    def finish(self, row: dict) -> None:
        """Fixed jobs queue nothing new."""

    def waiting(self) -> list[dict]:
        """The jobs not started yet."""
        return list(self.ready)


def read_log(path: Path | None) -> dict[str, dict]:
    """The rows of a JSONL log by job id (the last row of an id wins); empty without a file."""
    if path is None or not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


@dataclass
class Outcome:
    """What a pool run produced: the rows in finishing order (resumed ones first), the ids of jobs
    that were stopped or never started, and how many rows came from the log."""

    rows: list[dict] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    resumed: int = 0


def safe_call(job_fn: Callable[[dict], dict], job: dict) -> dict:
    """``job_fn(job)`` with its start and wall time; an exception becomes the row's ``error``."""
    started, date = time.perf_counter(), datetime.datetime.now().isoformat(timespec="seconds")
    try:
        row = job_fn(job)
    except Exception as err:  # noqa: BLE001  (a failed job is a result, e.g. a learning rate too high)
        error = f"{type(err).__name__}: {err}"[:2000]
        row = {**job, "error": error, "traceback": traceback.format_exc()[-3000:]}
    row.setdefault("started", date)
    row.setdefault("seconds", round(time.perf_counter() - started, 2))
    return row


def _worker(index: int, job_fn, setup, jobs, results) -> None:
    if setup is not None:
        setup()
    while (job := jobs.get()) is not None:
        results.put((index, safe_call(job_fn, job)))


class _Processes:
    """``n`` spawned workers, each with its own job queue (so we know which job a dead one had)."""

    def __init__(self, n: int, job_fn, setup):
        self.ctx = multiprocessing.get_context("spawn")
        self.job_fn, self.setup = job_fn, setup
        self.results = self.ctx.Queue()
        self.workers: list = [None] * n
        self.running: dict[int, tuple[dict, float]] = {}
        for i in range(n):
            self._start(i)

    def _start(self, i: int) -> None:
        jobs = self.ctx.Queue()
        process = self.ctx.Process(target=_worker, args=(i, self.job_fn, self.setup, jobs, self.results),
                                   daemon=True)
        process.start()
        self.workers[i] = (process, jobs)

    def idle(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.running]

    def submit(self, i: int, job: dict) -> None:
        self.running[i] = (job, time.perf_counter())
        self.workers[i][1].put(job)

    def poll(self, timeout: float) -> list[dict]:
        rows = []
        try:
            i, row = self.results.get(timeout=timeout)
            self.running.pop(i, None)
            rows.append(row)
        except queue.Empty:
            pass
        for i, (job, since) in list(self.running.items()):
            process = self.workers[i][0]
            if not process.is_alive():
                self.running.pop(i)
                rows.append({**job, "error": f"worker process died (exit code {process.exitcode})",
                             "seconds": round(time.perf_counter() - since, 2)})
                self._start(i)
        return rows

    def stop(self) -> list[dict]:
        unfinished = [job for job, _ in self.running.values()]
        for process, _ in self.workers:
            if process.is_alive():
                process.terminate()
        for process, jobs in self.workers:
            process.join(timeout=5)
            jobs.close()
        self.results.close()
        self.running.clear()
        return unfinished


def run_jobs(
    plan,
    job_fn: Callable[[dict], dict],
    *,
    log: Path | None = None,
    deadline: Deadline | None = None,
    workers: int = 1,
    setup: Callable[[], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> Outcome:
    """Run the plan's jobs with ``job_fn`` until none is ready or the deadline stops them.

    ``workers`` > 1 runs jobs in that many spawned processes (``job_fn`` and ``setup`` must then be
    module-level functions); ``setup`` runs once per process before its first job (in this process
    for one worker). No job starts after the deadline, nor one whose expected time (the median of
    the finished jobs') would end after the deadline plus its grace; jobs still running at the end
    of the grace are stopped. ``on_row`` sees every row (resumed ones too) after the plan has.
    """
    deadline = deadline or Deadline()
    outcome, durations = Outcome(), []
    done = {key: row for key, row in read_log(log).items() if "error" not in row}

    def finished(row: dict, resumed: bool = False) -> None:
        outcome.rows.append(row)
        if not resumed:
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("a") as handle:
                    handle.write(json.dumps(row, default=str) + "\n")
            if "error" not in row:
                durations.append(row["seconds"])
        plan.finish(row)
        if on_row is not None:
            on_row(row)

    def next_job() -> dict | None:
        # Jobs the log already holds are finished at once, which may queue their dependents.
        while (job := plan.pop()) is not None and job["id"] in done:
            outcome.resumed += 1
            finished(done[job["id"]], resumed=True)
        return job

    def may_start() -> bool:
        return deadline.may_start(statistics.median(durations) if durations else 0.0)

    held: list[dict] = []  # a job popped but not started (the deadline came first)
    if workers <= 1:
        if setup is not None:
            setup()
        while may_start() and (job := next_job()) is not None:
            finished(safe_call(job_fn, job))
    else:
        pool = _Processes(workers, job_fn, setup)
        try:
            while True:
                while pool.idle() and may_start():
                    job = next_job()
                    if job is None:
                        break
                    pool.submit(pool.idle()[0], job)
                if not pool.running or deadline.overrun():
                    break
                for row in pool.poll(timeout=1.0):
                    finished(row)
        finally:
            held = pool.stop()
    # What is left: stopped jobs, then the ready jobs never started (the log's included, so that a
    # resumed plan still sees every row it can).
    while (job := plan.pop()) is not None:
        if job["id"] in done:
            outcome.resumed += 1
            finished(done[job["id"]], resumed=True)
        else:
            held.append(job)
    outcome.unfinished = [job["id"] for job in held]
    return outcome
