"""Token-by-token decoding of many sequences in one batch, each with its own KV cache.

A :class:`Sequence` is one choice of one request. :func:`prefill` runs the prompts of newly admitted
sequences in one forward pass (left-padded) and leaves each with its own slice of the KV cache;
:class:`DecodeBatch` then runs one decode step for all running sequences at once. When sequences
join or leave, the batch's cache is rebuilt from the members' slices (each left-padded to the
longest), so a new request joins at the next step and a finished one frees its row at once
(continuous batching). Every forward pass routes row i to its sequence's adapter
(``inducer.route``), so requests for different adapters share the pass.

Positions are counted per sequence (``position_ids``), and padding is masked out of attention, so a
sequence's tokens are those of ``model.generate`` on it alone. The isolation rule (see
:class:`DecodeBatch`) keeps that true when a batch-mate fails.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..runtime.named_adapters import adapters, route

logger = logging.getLogger("inducer.serve")

KVPiece = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (1, heads, length, dim)


@dataclass
class Sampling:
    """How one request picks its tokens (OpenAI's fields)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Sequence:
    """One choice being generated: its prompt, adapter, tokens so far and KV-cache slice."""

    prompt: list[int]
    adapter: str | None
    sampling: Sampling
    on_update: Callable[[Sequence], None]  # called (on the worker thread) after each token and at the end
    decode_text: Callable[[list[int]], str]
    eos: frozenset[int] = frozenset()
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    cached: int = 0  # tokens whose keys and values are in the cache
    piece: KVPiece | None = None  # the cache slice while the sequence is outside a batch
    generator: torch.Generator | None = None
    cancelled: bool = False  # set from the event loop when the client went away

    def __post_init__(self) -> None:
        if self.sampling.temperature > 0:
            self.generator = torch.Generator()
            if self.sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.sampling.seed)

    @property
    def finished(self) -> bool:
        """Whether the sequence is done (finish reason or error set)."""
        return self.finish_reason is not None

    def add(self, token: int) -> None:
        """Append a token; finish at EOS, a stop string or ``max_tokens``."""
        self.generated.append(token)
        words = [t for t in self.generated if t not in self.eos]
        self.text = self.decode_text(words)
        for stop in self.sampling.stop:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.finish_reason = self.text[:at], "stop"
        if self.finish_reason is None and token in self.eos:
            self.finish_reason = "stop"
        if self.finish_reason is None and len(self.generated) >= self.sampling.max_tokens:
            self.finish_reason = "length"

    def fail(self, message: str) -> None:
        """End the sequence with an error (its request answers 500; batch-mates go on)."""
        self.error, self.finish_reason = message, "error"


def pick_one(logits: torch.Tensor, seq: Sequence) -> int:
    """The next token of one sequence from its row of logits: argmax for temperature 0, else top-p
    sampling from the sequence's own generator (so a seeded request draws the same tokens in any
    batch). Raises only for this row (e.g. non-finite logits): its batch-mates are not involved."""
    if seq.generator is None:
        return int(logits.argmax())
    # On the CPU in float64, the maximum subtracted before dividing: any temperature > 0 gives finite
    # probabilities (a float32 division by 1e-30 would overflow to inf - inf = nan).
    row = logits.detach().to("cpu", torch.float64)
    if not torch.isfinite(row).all():
        raise FloatingPointError("the model produced non-finite logits for this sequence")
    probs = torch.softmax((row - row.max()) / seq.sampling.temperature, dim=-1)
    if seq.sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < seq.sampling.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def _commit_each(sequences: list[Sequence], logits: torch.Tensor, commit: Callable[[Sequence], None]) -> None:
    """The isolation rule's second half: after a shared pass succeeded, each row is picked and committed
    on its own; whatever fails in one row (its sampling, its text, its stop strings) fails that
    sequence only, and every other row is committed exactly as it would have been alone."""
    for row, seq in enumerate(sequences):
        try:
            token = pick_one(logits[row], seq)
            commit(seq)
            seq.add(token)
        except Exception as err:
            logger.exception("sequence failed after its forward pass")
            seq.fail(f"{type(err).__name__}: {err}")


def _keywords(model: nn.Module) -> frozenset[str]:
    return frozenset(inspect.signature(model.forward).parameters)


def forward(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache,
    routes: list[str | None],
):
    """One routed forward pass; the last position's logits (float32) and the updated cache."""
    takes = _keywords(model)
    # transformers 5 renamed past_key_values to cache (the old name is deprecated).
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "use_cache": True,
        "cache" if "cache" in takes else "past_key_values": cache,
    }
    if "position_ids" in takes:
        kwargs["position_ids"] = positions
    if "logits_to_keep" in takes:  # the LM head for the last position only
        kwargs["logits_to_keep"] = 1
    routing = route(model, routes) if adapters(model) else nullcontext()
    with torch.inference_mode(), routing:
        out = model(**kwargs)
    new_cache = out.cache if "cache" in out else out.past_key_values
    return out.logits[:, -1, :].float(), new_cache


def _pieces(cache, lengths: list[int], total: int) -> list[KVPiece]:
    """Each row's slice of a left-padded batch cache: the ``lengths[row]`` positions before
    ``total`` (layers a failed pass already extended hold more)."""
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return [
        [(k[row : row + 1, :, total - n : total], v[row : row + 1, :, total - n : total]) for k, v in layers]
        for row, n in enumerate(lengths)
    ]


def _batch_cache(pieces: list[KVPiece]):
    """A DynamicCache of the pieces, each left-padded with zeros to the longest; and its mask."""
    from transformers import DynamicCache

    longest = max(piece[0][0].shape[2] for piece in pieces)
    pads = [longest - piece[0][0].shape[2] for piece in pieces]
    layers = []
    for layer in range(len(pieces[0])):
        keys = torch.cat([F.pad(p[layer][0], (0, 0, pad, 0)) for p, pad in zip(pieces, pads, strict=True)])
        values = torch.cat([F.pad(p[layer][1], (0, 0, pad, 0)) for p, pad in zip(pieces, pads, strict=True)])
        layers.append((keys, values))
    mask = torch.ones(len(pieces), longest, dtype=torch.long, device=layers[0][0].device)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return DynamicCache(layers), mask


def prefill(model: nn.Module, sequences: list[Sequence], pad_id: int, device: torch.device) -> None:
    """Run the prompts of ``sequences`` in one left-padded pass: each gets its first token and its
    own cache slice. If the pass raises, no sequence has changed (the caller may retry each alone)."""
    longest = max(len(s.prompt) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, longest - len(seq.prompt) :] = torch.tensor(seq.prompt)
        mask[row, longest - len(seq.prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, cache = forward(
        model, ids.to(device), mask.to(device), positions.to(device), None, [s.adapter for s in sequences]
    )
    slices = _pieces(cache, [len(s.prompt) for s in sequences], longest)
    pieces = {id(seq): piece for seq, piece in zip(sequences, slices, strict=True)}

    def commit(seq: Sequence) -> None:
        seq.piece, seq.cached = pieces[id(seq)], len(seq.prompt)

    _commit_each(sequences, logits, commit)


class DecodeBatch:
    """The running sequences and their batched KV cache, one decode step at a time.

    The isolation rule: one sequence's request never changes another's result. A step either
    succeeds for the shared forward pass and then commits row by row (:func:`_commit_each`), or its
    pass raises and nothing is committed: every member keeps its tokens, its position and its own
    cache slice (cut out of the cache as it was before the pass), so a retry alone continues exactly
    where the batch stood.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.sequences: list[Sequence] = []
        self.cache = None
        self.mask: torch.Tensor | None = None

    def _release(self) -> None:
        """Give each member its slice of the batch cache and empty the batch. ``self.mask`` has the
        length of the last committed step: layers that a failed pass extended in place hold more
        positions, which ``_pieces`` leaves out."""
        if self.cache is not None:
            lengths = [s.cached for s in self.sequences]
            for seq, piece in zip(
                self.sequences, _pieces(self.cache, lengths, self.mask.shape[1]), strict=True
            ):
                seq.piece = piece
        self.sequences, self.cache, self.mask = [], None, None

    def set_members(self, sequences: list[Sequence]) -> None:
        """Make ``sequences`` the batch (in that order), rebuilding the cache if members changed."""
        if self.cache is not None and [id(s) for s in sequences] == [id(s) for s in self.sequences]:
            return
        self._release()  # members that stay keep their slice of the current cache
        if not sequences:
            return
        self.sequences = list(sequences)
        self.cache, self.mask = _batch_cache([s.piece for s in sequences])
        for seq in sequences:
            seq.piece = None  # the batch cache holds it now

    def step(self) -> None:
        """Feed each sequence its last token: one new token for every member (see the class's rule)."""
        seqs = self.sequences
        ids = torch.tensor([[s.generated[-1]] for s in seqs], device=self.device)
        mask = torch.cat([self.mask, torch.ones(len(seqs), 1, dtype=self.mask.dtype, device=self.device)], 1)
        positions = torch.tensor([[s.cached] for s in seqs], device=self.device)
        try:
            logits, cache = forward(self.model, ids, mask, positions, self.cache, [s.adapter for s in seqs])
        except BaseException:
            self._release()  # the pass may have extended some layers in place: back to the slices
            raise
        self.cache, self.mask = cache, mask

        def commit(seq: Sequence) -> None:
            seq.cached += 1

        _commit_each(seqs, logits, commit)
