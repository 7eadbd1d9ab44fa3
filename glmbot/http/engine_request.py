"""A checked chat request -> the engine's GenerationRequest: target, token budget, conversation id.

The `model` field picks the target ('auto' routed, 'base' plain, a domain, or domain@version);
max_tokens is held to the server's and the engine's limits with a 400 naming the one exceeded.
A chat front end's background task (title, tags: background.py) goes to the plain base.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from glmbot.http.background import background_task
from glmbot.http.errors import APIError
from glmbot.http.schemas import AUTO, CONVERSATION_HEADER, ChatCompletionRequest, ChatMessage, NamedToolChoice
from glmbot.serving.requests import GenerationRequest
from glmbot.serving.router import BASE

_CONVERSATION_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}")  # the registry's log takes 1-64 characters


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


def max_new_tokens(chat: ChatCompletionRequest, limits: TokenLimits, background: bool = False) -> int:
    """The asked budget, or a 400 naming the limit it breaks; a background task's is held to the limits."""
    asked = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    name = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    if asked is None:
        return min(limits.default, limits.server, limits.engine)
    if background and asked > 0:  # a front end's fixed budget (Open WebUI: 1000) must not fail its title
        return min(asked, limits.default, limits.server, limits.engine)
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


def chat_tools(chat: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools the model is shown: none for tool_choice 'none', only the named one for a named choice.
    ('required' is served as 'auto': the model is shown the tools, not forced to call one.)"""
    if not chat.tools or chat.tool_choice == "none":
        return None
    tools = [t.model_dump(exclude_none=True) for t in chat.tools]
    if isinstance(chat.tool_choice, NamedToolChoice):
        tools = [t for t in tools if t["function"]["name"] == chat.tool_choice.function.name]
    return tools


def history_message(m: ChatMessage) -> dict[str, Any]:
    """One OpenAI message as the engine takes it (role tool: a tool result; tool_calls kept)."""
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def generation_request(chat: ChatCompletionRequest, conversation: str, limits: TokenLimits) -> GenerationRequest:
    stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or ())
    if len(stop) > 16 or not all(stop):
        raise APIError(400, f"stop must be at most 16 non-empty strings, got {stop!r:.80}", param="stop")
    sampled = None if chat.temperature is None else chat.temperature > 0
    messages = [history_message(m) for m in chat.messages]
    background = background_task(messages) is not None  # a front end's title/tags request: the plain base
    return GenerationRequest(
        messages=messages, conversation_id=conversation, max_new_tokens=max_new_tokens(chat, limits, background),
        temperature=chat.temperature or None, top_p=chat.top_p, top_k=chat.top_k,
        repetition_penalty=chat.repetition_penalty, stop=tuple(stop), seed=chat.seed, do_sample=sampled,
        ignore_eos=chat.ignore_eos, tools=chat_tools(chat), **target(BASE if background else chat.model))
