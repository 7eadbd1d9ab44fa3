"""LangChain messages and tools <-> glmbot's OpenAI-style messages, tools and tool calls (ChatGlmbot's
conversions: an AIMessage's tool_calls, a ToolMessage as role 'tool', bind_tools' tool_choice)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from glmbot.errors import GenerationError

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
TOOL_FIELDS = ("tools", "tool_choice")  # set by bind_tools


def to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> OpenAI-style dicts (an AIMessage's tool_calls, a ToolMessage as role 'tool')."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type)
        if role is None:
            raise GenerationError(f"glmbot takes system, human, ai and tool messages, not {m.type!r} "
                                  f"({m.content!r:.40})")
        message: dict[str, Any] = {"role": role, "content": m.text if hasattr(m, "text") else str(m.content)}
        if role == "assistant" and getattr(m, "tool_calls", None):
            message["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                      "function": {"name": c["name"],
                                                   "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                                     for c in m.tool_calls]
        if role == "tool":
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def offered_tools(tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    """The tools shown to the model: none for tool_choice 'none'/False, only the named one for a name
    (or {'type': 'function', 'function': {'name': ...}}); 'auto', 'any', 'required', True: all of them
    (the model is shown them, not forced to call one)."""
    if not tools or tool_choice in ("none", False):
        return None
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    if name in (None, True, "auto", "any", "required"):
        return list(tools)
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise GenerationError(f"tool_choice={tool_choice!r} names no bound tool; bound: "
                              f"{[t['function']['name'] for t in tools]}")
    return chosen


def lc_tool_calls(result_calls: Sequence[Any]) -> list[dict[str, Any]]:
    """glmbot ToolCalls -> LangChain tool calls (each with a new id)."""
    return [{"name": c.name, "args": dict(c.arguments), "id": f"call_{uuid.uuid4().hex[:24]}", "type": "tool_call"}
            for c in result_calls]


__all__ = ["TOOL_FIELDS", "lc_tool_calls", "offered_tools", "to_openai_messages"]
