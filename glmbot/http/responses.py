"""Engine results -> OpenAI's `chat.completion` / `chat.completion.chunk` bodies and SSE events.

Each body carries one extension field, `glmbot`: which prefix answered, why, and how long it took
(docs/HTTP_API.md).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from glmbot.model.chat_format import ToolCall
from glmbot.serving.requests import GenerationResult

_FINISH = {"stop": "stop", "loop": "stop", "length": "length"}  # glmbot finish_reason -> OpenAI's


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
    if result.tool_calls and result.finish_reason == "stop":
        return "tool_calls"
    return _FINISH.get(result.finish_reason, "stop")


def tool_calls_body(calls: tuple[ToolCall, ...], stream: bool = False) -> list[dict[str, Any]]:
    """OpenAI's `tool_calls` (arguments as JSON text); in a stream each also carries its index."""
    out = []
    for i, call in enumerate(calls):
        body = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
        out.append({"index": i, **body} if stream else body)
    return out


def message_body(result: GenerationResult) -> dict[str, Any]:
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {"role": "assistant", "content": result.text or None, "tool_calls": tool_calls_body(result.tool_calls)}


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
        "choices": [{"index": 0, "message": message_body(result),
                     "logprobs": None, "finish_reason": openai_finish_reason(result)}],
        "usage": usage_body(result), "glmbot": glmbot_extension(result, conversation),
    }


def chunk_body(ids: CompletionIds, delta: dict[str, Any], finish_reason: str | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    body = {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        body["usage"] = None  # stream_options.include_usage: only the last chunk carries usage
    return body


def content_events(ids: CompletionIds, with_usage: bool = False) -> Callable[[str], str]:
    """`sse(chunk_body(ids, {"content": text}, with_usage=with_usage))` for any text, byte for byte,
    from one pre-rendered frame: a stream's deltas cost one small json.dumps each, not the body's."""
    marker = "\u0000glmbot-content\u0000"
    frame = sse(chunk_body(ids, {"content": marker}, with_usage=with_usage))
    head, tail = frame.split(json.dumps(marker, ensure_ascii=False))
    return lambda text: head + json.dumps(text, ensure_ascii=False) + tail


def usage_chunk(ids: CompletionIds, result: GenerationResult) -> dict[str, Any]:
    return {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "system_fingerprint": None, "choices": [], "usage": usage_body(result)}


def sse(body: dict[str, Any] | str) -> str:
    """One server-sent event; the body JSON-encoded unless it is already text ('[DONE]')."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"
