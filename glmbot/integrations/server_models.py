"""The wire format of glmbot's OpenAI-compatible API: request schema, errors, response bodies.

Requests are checked here, before the engine sees them, so that a bad field is a 400 naming the
field. Responses follow OpenAI's `chat.completion` / `chat.completion.chunk` objects, plus one
extension field, `glmbot`, that carries the route decision (see docs/HTTP_API.md).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glmbot.serving.requests import GenerationRequest, GenerationResult
from glmbot.serving.router import BASE

AUTO = "auto"  # the model name that lets the engine's router choose the domain
CONVERSATION_HEADER = "X-Glmbot-Conversation"
_CONVERSATION_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}")  # the registry's log takes 1-64 characters
_FINISH = {"stop": "stop", "length": "length"}  # glmbot finish_reason -> OpenAI's


class APIError(Exception):
    """An error answered as OpenAI's {"error": {"message", "type", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---- request schema --------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # 'developer' is OpenAI's newer 'system'
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """OpenAI's chat request as glmbot serves it; unknown fields are refused by name (400)."""

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, strict=True)
    max_completion_tokens: int | None = Field(None, strict=True)  # OpenAI's newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # 0 = greedy
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63, strict=True)
    user: str | None = None  # taken as the conversation id when no X-Glmbot-Conversation header is sent
    n: int | None = Field(None, strict=True)
    presence_penalty: float | None = None  # only 0: ChatGLM2 has no such penalty (repetition_penalty is ours)
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    # glmbot extensions (sent through extra_body by the openai client)
    top_k: int | None = Field(None, ge=0, strict=True)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False  # benchmarks: always generate max_tokens


def parse_chat_request(data: Any) -> ChatCompletionRequest:
    """A decoded JSON body -> ChatCompletionRequest, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        chat = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        got = f" (got {json.dumps(first['input'], ensure_ascii=False)[:60]})" if "input" in first else ""
        more = f"; {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
        hint = " (not an OpenAI chat field glmbot serves)" if first["type"] == "extra_forbidden" else ""
        raise APIError(400, f"invalid field {where}: {first['msg']}{hint}{got}{more}", param=where) from None
    _check_unsupported(chat)
    return chat


def _check_unsupported(chat: ChatCompletionRequest) -> None:
    if chat.n not in (None, 1):
        raise APIError(400, f"n = {chat.n} is not supported: glmbot returns one choice; send n = 1 "
                            "(or several requests, which the engine batches together)", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(chat, name) not in (None, 0):
            raise APIError(400, f"{name} = {getattr(chat, name)} is not supported by ChatGLM2 serving; leave it at 0 "
                                "and use the glmbot extension field repetition_penalty (> 1 penalises repeats)",
                           param=name)
    if chat.logprobs:
        raise APIError(400, "logprobs are not supported by glmbot; leave logprobs unset", param="logprobs")
    if chat.stream_options is not None and not chat.stream:
        raise APIError(400, "stream_options is only allowed with stream = true", param="stream_options")


# ---- request -> engine ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenLimits:
    default: int  # [generation] max_new_tokens, capped by the two below
    server: int  # [server] max_tokens_limit
    engine: int  # the engine's max_len (prompt + answer)


def conversation_id(header: str | None, user: str | None) -> str:
    """The header's id, else `user`, else a new one; 400 when the given one cannot be logged."""
    given = header if header is not None else user
    if given is None:
        return uuid.uuid4().hex
    if not _CONVERSATION_RE.fullmatch(given):
        source = CONVERSATION_HEADER if header is not None else "user"
        raise APIError(400, f"{source} = {given[:80]!r} is not a usable conversation id: use 1-64 characters "
                            "among letters, digits and . _ : @ -", param=source)
    return given


def max_new_tokens(chat: ChatCompletionRequest, limits: TokenLimits) -> int:
    asked = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    name = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    if asked is None:
        return min(limits.default, limits.server, limits.engine)
    if asked <= 0:
        raise APIError(400, f"{name} = {asked} must be a positive integer", param=name)
    if asked > limits.server:
        raise APIError(400, f"{name} = {asked} is above this server's limit of {limits.server} "
                            "([server] max_tokens_limit)", param=name)
    if asked > limits.engine:
        raise APIError(400, f"{name} = {asked} is beyond the engine's context of {limits.engine} tokens "
                            "(prompt + answer); ask for fewer", param=name)
    return asked


def target(model: str) -> dict[str, str | None]:
    """'auto' -> routed; 'base' -> plain model; 'support' -> a domain; 'support@v3' -> an adapter."""
    model = model.strip()
    if model == AUTO:
        return {"domain": None, "adapter": None}
    if model == BASE:
        return {"domain": BASE, "adapter": None}
    if "@" in model:
        return {"domain": None, "adapter": model}
    return {"domain": model, "adapter": None}


def generation_request(chat: ChatCompletionRequest, conversation: str, limits: TokenLimits) -> GenerationRequest:
    stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or ())
    if len(stop) > 16 or not all(stop):
        raise APIError(400, f"stop must be at most 16 non-empty strings, got {stop!r:.80}", param="stop")
    sampled = None if chat.temperature is None else chat.temperature > 0
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in chat.messages]
    return GenerationRequest(
        messages=messages, conversation_id=conversation, max_new_tokens=max_new_tokens(chat, limits),
        temperature=chat.temperature or None, top_p=chat.top_p, top_k=chat.top_k,
        repetition_penalty=chat.repetition_penalty, stop=tuple(stop), seed=chat.seed, do_sample=sampled,
        ignore_eos=chat.ignore_eos, **target(chat.model))


# ---- engine -> response ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CompletionIds:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> CompletionIds:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def openai_finish_reason(result: GenerationResult) -> str:
    return _FINISH.get(result.finish_reason, "stop")


def usage_body(result: GenerationResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def glmbot_extension(result: GenerationResult, conversation: str) -> dict[str, Any]:
    """The `glmbot` field: which prefix answered, why, and how long it took."""
    route, t = result.route, result.timings
    return {
        "domain": route.domain if route else None, "adapter": result.adapter,
        "adapter_version": result.adapter_version, "reason": route.reason if route else None,
        "score": route.score if route else None, "detail": route.detail if route else None,
        "damaged_adapter": route.damaged if route else None,
        "finish_reason": result.finish_reason, "conversation_id": conversation,
        "timings": {"queued_s": round(t.queued_s, 6), "total_s": round(t.total_s, 6),
                    "first_token_s": None if t.first_token_s is None else round(t.first_token_s, 6)},
    }


def completion_body(ids: CompletionIds, result: GenerationResult, conversation: str) -> dict[str, Any]:
    return {
        "id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "logprobs": None, "finish_reason": openai_finish_reason(result)}],
        "usage": usage_body(result), "glmbot": glmbot_extension(result, conversation),
    }


def chunk_body(ids: CompletionIds, delta: dict[str, str], finish_reason: str | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    body = {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        body["usage"] = None  # stream_options.include_usage: only the last chunk carries usage
    return body


def usage_chunk(ids: CompletionIds, result: GenerationResult) -> dict[str, Any]:
    return {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "system_fingerprint": None, "choices": [], "usage": usage_body(result)}


def sse(body: dict[str, Any] | str) -> str:
    """One server-sent event; the body JSON-encoded unless it is already text ('[DONE]')."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"
