"""One completion or chat request's generation: its sequences on the scheduler, and its answer as one
JSON response or as server-sent events, token by token."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .decoding import Sampling, Sequence
from .protocol import ServeError


class Service(Protocol):
    """What a generation needs of the server (:class:`inducer.serve.app.Service` has it); a protocol,
    so that this module does not import the app that imports it."""

    engine: Any
    scheduler: Any

    def sampling(self, body: Any, max_tokens: int | None, prompt_tokens: int) -> Sampling: ...

    def record(self, endpoint: str, adapter: str | None, status: int, started: float,
               **fields: Any) -> None: ...

DISCONNECT_POLL_S = 0.25


def _choice(chat: bool, index: int, seq: Sequence) -> dict:
    if chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": seq.text},
            "finish_reason": seq.finish_reason,
        }
    return {"index": index, "text": seq.text, "logprobs": None, "finish_reason": seq.finish_reason}


class Generation:
    """One completion or chat request: its sequences and how to answer them."""

    def __init__(
        self,
        service: Service,
        chat: bool,
        body,
        adapter: str | None,
        prompts: list[list[int]],
        max_tokens: int | None,
    ):
        self.service, self.chat, self.body, self.adapter = service, chat, body, adapter
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created, self.started = int(time.time()), time.perf_counter()
        self.loop = asyncio.get_running_loop()
        # (sequence index, its text then, whether it had finished): one per token while streaming.
        self.updates: asyncio.Queue[tuple[int, str, bool]] = asyncio.Queue()
        engine = service.engine
        self.sequences: list[Sequence] = []
        for prompt in prompts:
            sampling = service.sampling(body, max_tokens, len(prompt))
            for i in range(body.n):
                seeded = Sampling(**{**vars(sampling), "seed": None if body.seed is None else body.seed + i})
                index = len(self.sequences)
                eos = frozenset() if body.ignore_eos else engine.eos
                self.sequences.append(
                    Sequence(prompt, adapter, seeded, self._notifier(index), engine.decode, eos)
                )

    def _notifier(self, index: int):
        streaming = self.body.stream

        def notify(seq: Sequence) -> None:
            # A whole response waits for the end only: waking the event loop for every token would
            # take the worker thread's GIL time. A stream gets the text as it was after each token (a
            # snapshot), so it stays token by token however far the event loop lags behind.
            if streaming or seq.finished:
                self.loop.call_soon_threadsafe(self.updates.put_nowait, (index, seq.text, seq.finished))

        return notify

    def _record(self, status: int) -> None:
        self.service.record(
            "chat" if self.chat else "completions",
            self.adapter,
            status,
            self.started,
            id=self.id,
            n=len(self.sequences),
            prompt_tokens=sum(len(s.prompt) for s in self.sequences),
            completion_tokens=sum(len(s.generated) for s in self.sequences),
            # Unfinished when the client left: the worker drops them at its next step.
            finish_reasons=sorted({str(s.finish_reason or "cancelled") for s in self.sequences}),
        )

    def _envelope(self, choices: list[dict], chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
        }

    def _usage(self) -> dict:
        prompt = sum(len(s.prompt) for s in self.sequences)
        completion = sum(len(s.generated) for s in self.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def answer(self, request: Request | None = None) -> JSONResponse | Response:
        """Wait for every sequence; the whole response. A client that goes away meanwhile (checked
        every ``DISCONNECT_POLL_S``) has its sequences cancelled: they leave the batch at the next step."""
        self.service.scheduler.submit(self.sequences)
        try:
            while not all(s.finished for s in self.sequences):
                try:
                    await asyncio.wait_for(self.updates.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if request is not None and await request.is_disconnected():
                        self._record(499)  # nginx's "client closed request": nobody reads this answer
                        return Response(status_code=499)
        finally:
            for seq in self.sequences:
                seq.cancelled = True  # no-op for finished ones; frees the rows if the client left
        failed = next((s for s in self.sequences if s.error), None)
        if failed is not None:
            self._record(500)
            raise ServeError(500, _failure(failed))
        self._record(200)
        choices = []
        for i, seq in enumerate(self.sequences):
            choice = _choice(self.chat, i, seq)
            if self.body.return_token_ids:
                choice["token_ids"] = list(seq.generated)
            choices.append(choice)
        return JSONResponse({**self._envelope(choices, False), "usage": self._usage()})

    def stream(self) -> StreamingResponse:
        """Server-sent events: each sequence's new text as it is generated, then ``[DONE]``."""
        self.service.scheduler.submit(self.sequences)
        holdback = max((len(s) for s in self.sequences[0].sampling.stop), default=1) - 1
        return StreamingResponse(self._events(holdback), media_type="text/event-stream")

    async def _events(self, holdback: int):
        sent = [0] * len(self.sequences)
        closed = [False] * len(self.sequences)  # its chunk with the finish reason went out
        status = 200
        try:
            if self.chat:
                start = [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    for i in range(len(self.sequences))
                ]
                yield _event(self._envelope(start, True))
            while not all(closed):
                index, text, final = await self.updates.get()
                seq = self.sequences[index]
                if closed[index]:
                    continue
                if seq.error:
                    status = 500
                    yield _event(ServeError(500, _failure(seq)).body())
                    break
                # Hold back what could still become a stop string or an incomplete character.
                upto = len(text) if final else max(sent[index], len(text) - holdback)
                while not final and upto > sent[index] and text[upto - 1] == "\ufffd":
                    upto -= 1
                if upto > sent[index] or final:
                    delta, sent[index], closed[index] = text[sent[index] : upto], upto, final
                    yield _event(self._envelope([self._delta(index, seq, delta, final)], True))
            yield "data: [DONE]\n\n"
        finally:
            for seq in self.sequences:
                seq.cancelled = True
            self._record(status)

    def _delta(self, index: int, seq: Sequence, delta: str, final: bool) -> dict:
        reason = seq.finish_reason if final else None
        if self.chat:
            return {"index": index, "delta": {"content": delta} if delta else {}, "finish_reason": reason}
        return {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}


def _failure(seq: Sequence) -> str:
    """The client's message for a failed sequence: the error's kind only (the server's log holds
    its traceback; the text of an exception may name the server's files)."""
    kind = (seq.error or "error").split(":", 1)[0]
    return f"generation failed ({kind}); the server log has the details; other requests were not affected"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
