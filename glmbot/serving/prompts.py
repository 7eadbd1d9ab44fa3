"""A request's prompt ids on the engine's base family, and its reply back as text + tool calls.

ChatGLM2 keeps the official `[Round N]` prompt (glmbot.serving.requests.chat_turns: a system text goes
in front of the query; tools are refused). ChatGLM3 and GLM-4 build their role prompts through
glmbot.model.chat_format (a native system turn, tools in the system turn, tool calls in the history,
tool results as observation turns); a reply is decoded with its special tokens kept and parsed there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from glmbot.errors import GenerationError
from glmbot.model.chat_format import (ChatFormatError, ChatMessage, Reply, ToolCall, as_message, history_messages,
                                      normalize_tools, parse_reply, prompt_ids)
from glmbot.model.family import CHATGLM2, GlmFamily
from glmbot.serving.requests import GenerationRequest, chat_turns


def engine_family(engine: Any) -> GlmFamily:
    """The base family an engine (or the Ray Serve ingress's remote engine) serves."""
    return getattr(engine, "family", None) or getattr(engine.tokenizer, "family", None) or CHATGLM2


def tools_refused(family: GlmFamily) -> GenerationError:
    return GenerationError(f"this server's base is {family.display}, which has no tool calls; serve a ChatGLM3 or "
                           "GLM-4 base for tools (base_model = THUDM/chatglm3-6b or THUDM/glm-4-9b-chat)")


def request_messages(request: GenerationRequest) -> list[ChatMessage]:
    """The request's conversation as ChatMessages (request.system first unless a system message leads)."""
    if request.messages is None:
        if request.query is None or not str(request.query).strip():
            raise GenerationError("empty request: give messages=[{'role': 'user', 'content': ...}] or a query")
        return history_messages(str(request.query), list(request.history), request.system)
    try:
        messages = [as_message(m, i) for i, m in enumerate(request.messages)]
    except ChatFormatError as exc:
        raise GenerationError(str(exc)) from None
    if request.system and not (messages and messages[0].role == "system"):
        messages.insert(0, ChatMessage("system", request.system))
    return messages


def build_prompt(request: GenerationRequest, tokenizer: Any,
                 family: GlmFamily) -> tuple[str, list[tuple[str, str]], list[int]]:
    """(query, history, prompt ids) of a chat request: (query, history) for routing and logging."""
    if family.chat_format == "rounds":
        if request.tools:
            raise tools_refused(family)
        query, history = chat_turns(request, family)
        return query, history, tokenizer.build_chat_input(query, history)
    query, history = chat_turns(request, family)  # checks the order and the roles
    try:
        ids = prompt_ids(family, tokenizer, request_messages(request), normalize_tools(request.tools))
    except ChatFormatError as exc:
        raise GenerationError(str(exc)) from None
    return query, history, ids


def parse_completion(family: GlmFamily, tokenizer: Any, completion: Sequence[int]) -> Reply:
    """The reply of a request with tools: decoded with special tokens kept (a call's `<|assistant|>`
    header), then split into the visible text and the tool calls."""
    return parse_reply(family, tokenizer.decode(list(completion), skip_special_tokens=False))


class ToolGate:
    """The streaming of one request with tools. Its text is held until the reply's first line is
    complete: an empty header line is a text answer, which then streams; a tool's name is a call,
    never shown as text; a later `<|assistant|>` segment (`segment_id`) shuts the stream too. At the
    end the reply is parsed into text and tool calls (special tokens kept)."""

    def __init__(self, family: GlmFamily, decode: Callable[..., str], segment_id: int | None):
        self.family, self.decode, self.segment_id = family, decode, segment_id
        self.state = "wait"  # "wait" (first line not complete) | "open" (a text answer) | "shut" (a call)
        self.held: list[str] = []
        self.streamed = ""  # the text let through so far

    def push(self, token: int, completion: Sequence[int], delta: str) -> str:
        """What of `delta` (the text `token` added) may stream now."""
        out = self._let_through(token, completion, delta)
        self.streamed += out
        return out

    def _let_through(self, token: int, completion: Sequence[int], delta: str) -> str:
        if self.state == "shut" or token == self.segment_id:
            self.state = "shut"
            return ""
        if self.state == "open":
            return delta
        self.held.append(delta)
        header, newline, _ = self.decode(list(completion)).partition("\n")
        if not newline:
            return ""
        if header.strip():  # a tool's name: a call
            self.state = "shut"
            return ""
        self.state, out = "open", "".join(self.held)
        self.held.clear()
        return out

    def finish(self, completion: Sequence[int], text: str) -> tuple[str, tuple[ToolCall, ...], str]:
        """(answer text, tool calls, the text still to send) once the request ends; `text` is the
        visible text so far. Text already sent is never taken back."""
        reply = parse_reply(self.family, self.decode(list(completion), skip_special_tokens=False))
        text = reply.content if reply.tool_calls else text
        return text, reply.tool_calls, text[len(self.streamed):] if text.startswith(self.streamed) else ""


__all__ = ["ToolGate", "build_prompt", "engine_family", "parse_completion", "request_messages", "tools_refused"]
