"""The OpenAI-compatible request bodies, the server's limits, and errors in OpenAI's error format.

Request models accept the fields OpenAI clients send. A field we do not act on is accepted only where
ignoring it cannot change the answer (``user``, ``metadata``, or e.g. ``presence_penalty`` at its
neutral 0); otherwise (``logit_bias``, ``logprobs``, ``tools``, ``best_of``, ``echo``, a misspelt
field, ...) the request is refused with a 400 naming the field, never silently answered differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these it gets a 400 naming the limit."""

    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    max_inputs: int = 64  # prompts in one completion request, texts in one classify request
    max_queue: int = 256  # requests in flight; more get 429
    max_adapters: int = 64  # loaded at once (each costs memory and metrics series)
    max_adapter_bytes: int = 1 << 30  # all files of one adapter folder, checked before reading
    max_adapter_files: int = 32  # entries of one adapter folder


class ServeError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or _KINDS.get(status, "server_error")

    def body(self) -> dict:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


MAX_STOP_CHARS = 256

_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_unavailable",
}


# Fields accepted and ignored: they never change the answer.
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
# Fields we do not implement, accepted only at a value meaning "off" (clients send them so).
NEUTRAL_VALUES: dict[str, tuple] = {
    "logit_bias": (None, {}),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "stream_options": (None, {}, {"include_usage": False}),
}


def _same(value, neutral) -> bool:
    """JSON equality: 0 and 0.0 alike, but not false and 0 (nor 1 and true)."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return type(value) is type(neutral) and value == neutral
    return value == neutral


def _refuse_unsupported(cls: type[BaseModel], data):
    """A 400 naming the first field this server would otherwise ignore at a value that matters."""
    if not isinstance(data, dict):
        return data
    for key, value in data.items():
        if key in cls.model_fields or key in IGNORED_FIELDS:
            continue
        neutral = NEUTRAL_VALUES.get(key)
        if neutral is None:
            raise ServeError(400, f"unknown field {key!r}; check its spelling or leave it out", param=key)
        if value is not None and not any(_same(value, ok) for ok in neutral if ok is not None):
            raise ServeError(
                400, f"{key} is not supported by this server; leave it out (or send {neutral[1]!r})", key
            )
    return data


class _Request(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)  # "7" is not a number, nor "true" a bool

    model: str = Field(max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    # torch's generators take 64-bit seeds; choice i of a request uses seed + i.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1 - 1024)
    stream: bool = False
    user: str | None = None
    # Not in OpenAI's API (vLLM's spellings): return the generated token ids in each choice; go on
    # past the end-of-sequence token.
    return_token_ids: bool = False
    ignore_eos: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data):
        return _refuse_unsupported(cls, data)

    def stop_strings(self) -> list[str]:
        """``stop`` as a list of non-empty strings (OpenAI allows up to 4), each at most
        ``MAX_STOP_CHARS`` long (streaming holds back that much text)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ServeError(
                400, f"stop: give at most 4 non-empty strings of at most {MAX_STOP_CHARS} characters", "stop"
            )
        return stops


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one string, several strings, or one prompt given as token ids."""
        if self.echo or self.suffix or (self.best_of or 1) > 1:
            raise ServeError(400, "echo, suffix and best_of are not supported; leave them out")
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise ServeError(
                400, "prompt is empty; give a string, a list of strings or token ids", param="prompt"
            )
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class ChatMessage(BaseModel):
    """One message of a chat (text content; a list of text parts is joined; other parts, such as
    images, are refused rather than dropped)."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(max_length=64)
    content: str | list[dict] | None = None
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        """The message's text."""
        if isinstance(self.content, list):
            parts = self.content
            if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in parts):
                raise ServeError(400, "messages: only text content parts are supported", param="messages")
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: labels and probabilities from a sequence-classification adapter."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256)
    input: str | list[str]

    def texts(self) -> list[str]:
        """The inputs as a list."""
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise ServeError(400, "input is empty; give a string or a list of strings", param="input")
        return texts


class AdapterRequest(BaseModel):
    """``POST /v1/adapters``: load the adapter saved in ``path`` (under ``--adapter-root``) as ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1, max_length=4096)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line from pydantic's validation errors, and the parameter it names."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; check its spelling or leave it out"
    return (f"{param}: {message}" if param else message), param
