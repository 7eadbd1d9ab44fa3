"""The request schema of glmbot's OpenAI-compatible chat API, checked before the engine sees it.

A bad field is a 400 naming the field; a field OpenAI has but glmbot cannot honour is refused by
name with what to send instead (docs/HTTP_API.md).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glmbot.http.errors import APIError

AUTO = "auto"  # the model name that lets the engine's router choose the domain
CONVERSATION_HEADER = "X-Glmbot-Conversation"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str = ""  # JSON text, as OpenAI sends it


class ToolCallIn(_Strict):
    """An earlier assistant turn's tool call, sent back in the history."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    # 'developer' is OpenAI's newer 'system'; 'tool' returns a tool's result (ChatGLM3/GLM-4 bases)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only for an assistant turn that called tools
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


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
    tools: list[Tool] | None = None  # ChatGLM3/GLM-4 bases only (a ChatGLM2 base answers 400)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
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
        if where == "messages" and first["type"] == "too_short":
            hint = '; send the conversation, at least [{"role": "user", "content": "..."}]'
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
    for i, m in enumerate(chat.messages):
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise APIError(400, f"messages[{i}].content is null; only an assistant message with tool_calls may "
                                "leave it out", param=f"messages.{i}.content")
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"messages[{i}] has tool_calls but role {m.role!r}; only assistant messages call "
                                "tools", param=f"messages.{i}.tool_calls")
    if isinstance(chat.tool_choice, NamedToolChoice):
        names = [t.function.name for t in chat.tools or ()]
        if chat.tool_choice.function.name not in names:
            raise APIError(400, f"tool_choice names {chat.tool_choice.function.name!r}, which is not among tools "
                                f"{names}; name one of them", param="tool_choice")
