"""The isolation rule, by failure injection: one sequence failing anywhere in a decode step (its
forward pass, its sampling, its text) never changes what its batch-mates generate. Each batch-mate's
tokens are compared with the same sequence run alone (greedy and seeded sampling alike)."""

from __future__ import annotations

import threading

import pytest

from inducer.serve.decoding import Sampling, Sequence
from inducer.serve.engine import Engine
from inducer.serve.metrics import Metrics
from inducer.serve.scheduler import Scheduler

from .test_completions import prompt_ids

# (adapter, prompt, temperature, seed): greedy and seeded-sampling rows, before and after the poison.
MATES = [
    ("ind", "the food is", 0.0, None),
    ("pre", "a great place to eat", 0.9, 7),
    (None, "the food is", 1.0, 3),
    ("mix", "name the pub near the river", 0.0, None),
    ("ind", "the service was slow and", 0.7, 11),
]
TOKENS = 12


@pytest.fixture(scope="module")
def scheduler(served):
    adapters = {name: str(folder) for name, folder in served["adapters"].items()}
    engine = Engine.load(str(served["base"]), adapters, device="cpu")
    # A long wait: everything submitted together is prefilled and decoded together.
    running = Scheduler(engine, Metrics(), max_batch_size=8, max_wait_ms=300)
    running.start()
    yield running
    running.stop()


def _run(scheduler, seqs: list[Sequence]) -> None:
    done = threading.Semaphore(0)
    for seq in seqs:
        inner = seq.on_update
        seq.on_update = lambda s, inner=inner: (inner(s), s.finished and done.release())
    scheduler.submit(seqs)
    for _ in seqs:
        assert done.acquire(timeout=120), "a sequence never finished"


def _mate(scheduler, served, adapter, prompt, temperature, seed) -> Sequence:
    engine = scheduler.engine
    sampling = Sampling(TOKENS, temperature=temperature, seed=seed)
    return Sequence(prompt_ids(served, prompt), adapter, sampling, lambda s: None, engine.decode, frozenset())


class _Sentinel(Sequence):
    """After two tokens it feeds the sentinel token, on which the model's last block raises: the
    shared pass fails after the earlier layers extended their caches in place."""

    sentinel = -1

    def add(self, token: int) -> None:
        super().add(self.sentinel if len(self.generated) == 2 else token)


@pytest.fixture
def faulty_last_block(scheduler):
    """The last transformer block raises whenever the batch being run holds the sentinel token."""
    model = scheduler.engine.model
    _Sentinel.sentinel = len(scheduler.engine.tokenizer) - 1
    seen = {}

    def remember(_module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def explode(_module, _args):
        if seen.get("ids") is not None and bool((seen["ids"] == _Sentinel.sentinel).any()):
            raise RuntimeError("injected fault in the last block")

    hooks = [model.register_forward_pre_hook(remember, with_kwargs=True),
             model.transformer.h[-1].register_forward_pre_hook(explode)]
    yield
    for hook in hooks:
        hook.remove()


def _poison(kind: str, scheduler, served) -> Sequence:
    engine = scheduler.engine
    prompt = prompt_ids(served, "a great place to eat")
    if kind == "forward pass":
        return _Sentinel(prompt, "mix", Sampling(TOKENS, 0.0), lambda s: None, engine.decode)
    if kind == "sampling":  # a client's temperature of 1e-300: 0 in float32, so inf and nan
        return Sequence(prompt, "pre", Sampling(TOKENS, 1e-300, seed=1), lambda s: None, engine.decode)
    calls = []

    def broken_text(tokens):  # its third token's text raises (mid-decode, after the prefill)
        calls.append(1)
        if len(calls) == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return engine.decode(tokens)

    return Sequence(prompt, "ind", Sampling(TOKENS, 0.0), lambda s: None, broken_text)


@pytest.mark.parametrize("kind", ["forward pass", "sampling", "text"])
def test_a_failing_sequence_never_changes_its_batch_mates(scheduler, served, kind, faulty_last_block):
    mates = [_mate(scheduler, served, *job) for job in MATES]
    poison = _poison(kind, scheduler, served)
    batch = mates[:2] + [poison] + mates[2:]  # rows before and after the failing one
    _run(scheduler, batch)
    for job, mate in zip(MATES, mates, strict=True):
        solo = _mate(scheduler, served, *job)
        _run(scheduler, [solo])
        assert mate.error is None, (job, mate.error)
        assert mate.generated == solo.generated, job
        assert len(mate.generated) == TOKENS
    assert poison.finished
    if kind != "sampling":  # a tiny temperature is a valid request: it may as well succeed
        assert poison.error and poison.finish_reason == "error"
    assert not any(_Sentinel.sentinel in mate.generated for mate in mates)  # only the poison hit it
    assert scheduler.running() == 0
    assert scheduler.metrics.histogram_mean("inducer_batch_size") > 1  # they did share steps


def test_a_failed_pass_leaves_every_member_as_it_was(scheduler, served, faulty_last_block):
    """Token comparisons can miss a slightly wrong cache; here the slices themselves are compared."""
    import torch

    from inducer.serve.decoding import DecodeBatch, prefill

    engine = scheduler.engine
    seqs = [_mate(scheduler, served, *job) for job in MATES]
    model = engine.model
    done = scheduler.call(lambda: None)  # the worker is idle once this ran; the model is ours
    done.result(timeout=60)
    prefill(model, seqs, engine.pad_id, engine.device)
    batch = DecodeBatch(model, engine.device)
    batch.set_members(seqs)
    batch.step()  # one good step: the batch cache is no longer the prefill's
    batch.set_members([])
    before = [(list(s.generated), s.cached, [(k.clone(), v.clone()) for k, v in s.piece]) for s in seqs]
    batch.set_members(seqs)
    seqs[1].generated[-1] = _Sentinel.sentinel  # the last block raises on this batch
    with pytest.raises(RuntimeError, match="injected"):
        batch.step()
    seqs[1].generated[-1] = before[1][0][-1]
    batch.set_members([])
    for seq, (generated, cached, piece) in zip(seqs, before, strict=True):
        assert seq.generated == generated and seq.cached == cached and not seq.finished
        for (k, v), (k0, v0) in zip(seq.piece, piece, strict=True):
            assert torch.equal(k, k0) and torch.equal(v, v0)
