"""The scheduler in-process: a failing sequence never fails its batch-mates; late arrivals join a
running batch; metrics, ``--adapter`` parsing."""

from __future__ import annotations

import threading

import pytest

from inducer.serve.decoding import Sampling, Sequence
from inducer.serve.engine import Engine
from inducer.serve.metrics import Metrics
from inducer.serve.scheduler import Scheduler
from inducer.serve.server import parse_adapters

from .test_completions import offline_tokens, prompt_ids


@pytest.fixture(scope="module")
def scheduler(served):
    engine = Engine.load(str(served["base"]), {"ind": str(served["adapters"]["ind"]),
                                                "pre": str(served["adapters"]["pre"])}, device="cpu")
    running = Scheduler(engine, Metrics(), max_batch_size=8, max_wait_ms=50)
    running.start()
    yield running
    running.stop()


def _sequences(engine, jobs):
    done = threading.Semaphore(0)

    def update(seq):
        if seq.finished:
            done.release()

    seqs = [Sequence(prompt, adapter, Sampling(tokens, temperature=0), update, engine.decode, engine.eos)
            for adapter, prompt, tokens in jobs]
    return seqs, done


def test_a_failing_sequence_leaves_its_batch_mates_alone(scheduler, served):
    engine = scheduler.engine
    good = prompt_ids(served, "the food is")
    jobs = [("ind", good, 8), ("pre", [10**6, 3], 8), (None, good, 8), ("pre", good, 8)]
    seqs, done = _sequences(engine, jobs)
    scheduler.submit(seqs)
    for _ in seqs:
        assert done.acquire(timeout=60)
    assert seqs[1].error and "IndexError" in seqs[1].error and seqs[1].finish_reason == "error"
    for seq, (adapter, prompt, tokens) in zip(seqs, jobs, strict=True):
        if seq is not seqs[1]:
            assert seq.error is None
            assert seq.generated == offline_tokens(served, adapter, prompt, tokens)
    assert scheduler.running() == 0


def test_late_arrivals_join_the_running_batch(scheduler, served):
    engine = scheduler.engine
    prompt = prompt_ids(served, "a great place to eat")
    first, first_done = _sequences(engine, [("ind", prompt, 60)])
    started = threading.Event()
    inner = first[0].on_update
    first[0].on_update = lambda seq: (started.set(), inner(seq))
    scheduler.submit(first)
    assert started.wait(timeout=60)
    late, late_done = _sequences(engine, [("pre", prompt, 5), (None, prompt, 5)])
    scheduler.submit(late)
    for _ in late:
        assert late_done.acquire(timeout=60)
    assert first_done.acquire(timeout=60)
    assert first[0].generated == offline_tokens(served, "ind", prompt, 60)
    assert late[0].generated == offline_tokens(served, "pre", prompt, 5)
    assert late[1].generated == offline_tokens(served, None, prompt, 5)
    assert scheduler.metrics.histogram_mean("inducer_batch_size") > 1


def test_cancelled_sequences_are_dropped(scheduler, served):
    seqs, done = _sequences(scheduler.engine, [("ind", prompt_ids(served, "the food is"), 30)])
    seqs[0].cancelled = True
    scheduler.submit(seqs)
    assert done.acquire(timeout=60)
    assert seqs[0].finish_reason == "cancelled" and len(seqs[0].generated) <= 1


def test_parse_adapters():
    assert parse_adapters(["a=x", "b=y/z"]) == {"a": "x", "b": "y/z"}
    for bad in (["a"], ["=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(ValueError, match="--adapter"):
            parse_adapters(bad)


def test_metrics_render_prometheus_text():
    metrics = Metrics()
    metrics.count("requests_total", "Requests", adapter="a", status="200")
    metrics.count("requests_total", "Requests", adapter="a", status="200")
    metrics.observe("latency_seconds", "Latency", 0.3, adapter='we"ird')
    text = metrics.render()
    assert '# TYPE requests_total counter\nrequests_total{adapter="a",status="200"} 2' in text
    assert 'latency_seconds_bucket{adapter="we\\"ird",le="0.25"} 0' in text
    assert 'latency_seconds_bucket{adapter="we\\"ird",le="0.5"} 1' in text
    assert 'latency_seconds_count{adapter="we\\"ird"} 1' in text
