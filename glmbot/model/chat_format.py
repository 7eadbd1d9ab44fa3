"""Chat formats of the GLM family as pure functions: messages (+ tools) -> prompt ids, stop ids, and
the model's reply text -> content and structured tool calls (and back, for the history).

- ChatGLM2 (`rounds`): the official `[Round N]\\n\\n问：...\\n\\n答：` prompt; no system role (a system
  message is put in front of the query, as the official openai_api.py does); no tools.
- ChatGLM3 (`roles`): `[gMASK] sop`, then per message `<|role|>` + encode(f"{metadata}\\n") +
  encode(content), then `<|assistant|>` (THUDM/chatglm3-6b tokenization_chatglm.py,
  build_single_message / build_chat_input). Tools: the system turn's content + "\\n" +
  json.dumps(tools, indent=4, ensure_ascii=False); the default system text is the one of
  THUDM/ChatGLM3 openai_api_demo/utils.py. A call comes back as `{name}\\n` + a fenced
  `tool_call(arg=value, ...)` block (PROMPT.md "Tool Calling"); its result is an `<|observation|>` turn.
- GLM-4 (`roles`): `[gMASK]<sop>`, then per message `<|role|>` + encode(f"{metadata}\\n{content}")
  (messages with empty content are left out), then `<|assistant|>` (the chat_template of
  THUDM/glm-4-9b-chat's tokenizer_config.json). Tools: a `<|system|>` turn with the fixed self-introduction,
  `# 可用工具`, and per function `## {name}` + its JSON (indent 4) + the JSON-arguments instruction. A call
  comes back as `{name}\\n{JSON arguments}` (THUDM/GLM-4 basic_demo/glm_server.py, process_response).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glmbot.errors import GenerationError
from glmbot.model.family import GlmFamily

ROLES = ("system", "user", "assistant", "observation")
CHATGLM3_TOOLS_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"
GLM4_TOOLS_SYSTEM = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                     "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具")
GLM4_TOOL_FOOTER = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"


class ChatFormatError(GenerationError):
    """A conversation the base's chat format cannot express, or a reply that cannot be parsed."""


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool: its name and its arguments (a JSON-like dict)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatMessage:
    """One turn. role: system | user | assistant | observation (a tool result; OpenAI's 'tool')."""

    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    metadata: str = ""  # the header text after <|role|> (ChatGLM3 'interpreter', a tool name)


@dataclass(frozen=True)
class Reply:
    """The model's reply: its text (tool-call segments removed) and its tool calls."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Special:
    """A special token in a prompt, by name."""

    name: str


Part = Special | str  # a special token, or text encoded on its own


def as_message(m: ChatMessage | Mapping[str, Any], index: int = 0) -> ChatMessage:
    """A ChatMessage from an OpenAI-style dict (role 'tool' = observation; tool_calls with JSON arguments)."""
    if isinstance(m, ChatMessage):
        message = m
    elif isinstance(m, Mapping):
        calls = tuple(_call_from_openai(c, index) for c in (m.get("tool_calls") or ()))
        role = "observation" if m.get("role") == "tool" else m.get("role")
        message = ChatMessage(role=role, content=m.get("content") or "", tool_calls=calls,
                              metadata=m.get("metadata") or "")
    else:
        raise ChatFormatError(f"messages[{index}] = {m!r:.80} is not a message dict or ChatMessage")
    if message.role not in ROLES or not isinstance(message.content, str):
        raise ChatFormatError(f"messages[{index}] has role {message.role!r} and content {message.content!r:.40}; "
                              "roles are system, user, assistant, tool/observation, content a string")
    return message


def _call_from_openai(call: Any, index: int) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    function = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not function.get("name"):
        raise ChatFormatError(f"messages[{index}]: tool call {call!r:.80} has no function name")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ChatFormatError(f"messages[{index}]: arguments of {function['name']!r} are not JSON ({exc})") from None
    if not isinstance(arguments, Mapping):
        raise ChatFormatError(f"messages[{index}]: arguments of {function['name']!r} must be a JSON object")
    return ToolCall(str(function["name"]), dict(arguments))


def history_messages(query: str, history: Sequence[tuple[str, str]] | None = None,
                     system: str | None = None) -> list[ChatMessage]:
    """The messages of a (query, history rounds, system) conversation."""
    out = [ChatMessage("system", system)] if system else []
    for old_query, response in history or ():
        out += [ChatMessage("user", old_query), ChatMessage("assistant", response)]
    return out + [ChatMessage("user", query)]


def normalize_tools(tools: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Function descriptions ({name, description, parameters}) of OpenAI-style or bare tool dicts."""
    out = []
    for i, tool in enumerate(tools or ()):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name"):
            raise ChatFormatError(f"tools[{i}] = {tool!r:.80} has no function name; give "
                                  "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}")
        out.append(dict(function))
    return out


# -- prompts ------------------------------------------------------------------------------------

def prompt_parts(family: GlmFamily, messages: Iterable[ChatMessage | Mapping[str, Any]],
                 tools: Iterable[Mapping[str, Any]] | None = None) -> list[Part]:
    """The prompt as specials and separately encoded texts, ending where the model answers."""
    msgs = [as_message(m, i) for i, m in enumerate(messages)]
    functions = normalize_tools(tools)
    if not msgs or msgs[-1].role not in ("user", "observation"):
        raise ChatFormatError("the last message must be a user message or a tool result; got "
                              f"{msgs[-1].role if msgs else 'no messages'!r}")
    if family.chat_format == "rounds":
        return [Special(family.prompt_start[0]), Special(family.prompt_start[1]), _rounds_text(family, msgs, functions)]
    parts: list[Part] = [Special(family.prompt_start[0]), Special(family.prompt_start[1])]
    for message in _with_tools(family, msgs, functions):
        for metadata, content in _turns(family, message):
            parts += _turn_parts(family, message.role, metadata, content)
    return parts + [Special("<|assistant|>")]


def _rounds_text(family: GlmFamily, msgs: list[ChatMessage], functions: list) -> str:
    from glmbot.model.tokenizer import build_prompt

    if functions or any(m.role == "observation" or m.tool_calls for m in msgs):
        raise ChatFormatError(f"{family.display} has no tool calls; serve a ChatGLM3 or GLM-4 base for tools")
    system = msgs.pop(0).content if msgs[0].role == "system" else ""
    history, pending = [], None
    for m in msgs[:-1]:
        if m.role == "user" and pending is None:
            pending = m.content
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.content))
            pending = None
        else:
            raise ChatFormatError(f"{family.display}: messages must alternate user/assistant after one leading "
                                  f"system message; found {m.role!r} out of turn")
    if pending is not None:
        raise ChatFormatError(f"{family.display}: two user messages in a row")
    return build_prompt(system + msgs[-1].content, history)


def _with_tools(family: GlmFamily, msgs: list[ChatMessage], functions: list) -> list[ChatMessage]:
    if not functions:
        return msgs
    if family.name == "chatglm3":
        # The system turn carries the tools (the user's system text, or the official default).
        system = msgs[0].content if msgs[0].role == "system" else CHATGLM3_TOOLS_SYSTEM
        rest = msgs[1:] if msgs[0].role == "system" else msgs
        text = system + "\n" + json.dumps(functions, indent=4, ensure_ascii=False)
        return [ChatMessage("system", text), *rest]
    block = GLM4_TOOLS_SYSTEM + "".join(
        f"\n\n## {f['name']}\n\n{json.dumps(f, indent=4, ensure_ascii=False)}{GLM4_TOOL_FOOTER}" for f in functions)
    return [ChatMessage("system", block), *msgs]


def _turns(family: GlmFamily, m: ChatMessage) -> list[tuple[str, str]]:
    """(metadata, content) of each turn a message becomes: an assistant's text, then one turn per call."""
    turns = [] if (m.tool_calls and not m.content) else [(m.metadata, m.content)]
    return turns + [format_tool_call(family, call) for call in m.tool_calls]


def _turn_parts(family: GlmFamily, role: str, metadata: str, content: str) -> list[Part]:
    if family.name == "chatglm3":
        return [Special(f"<|{role}|>"), f"{metadata}\n", content]
    if not content:  # the GLM-4 template leaves out messages without content
        return []
    return [Special(f"<|{role}|>"), f"{metadata}\n{content}"]


def prompt_text(family: GlmFamily, messages: Iterable[ChatMessage | Mapping[str, Any]],
                tools: Iterable[Mapping[str, Any]] | None = None) -> str:
    """The prompt as text, special tokens by name (as the official templates print it)."""
    return "".join(p.name if isinstance(p, Special) else p for p in prompt_parts(family, messages, tools))


def prompt_ids(family: GlmFamily, tokenizer: Any, messages: Iterable[ChatMessage | Mapping[str, Any]],
               tools: Iterable[Mapping[str, Any]] | None = None) -> list[int]:
    """Token ids of the prompt: specials by id, each text part encoded on its own (no injection)."""
    ids: list[int] = []
    for part in prompt_parts(family, messages, tools):
        if isinstance(part, Special):
            ids.append(tokenizer.special_ids[part.name])
        elif part:
            ids += tokenizer.encode(part, add_special_tokens=False)
    return ids


def answer_ids(family: GlmFamily, tokenizer: Any, text: str) -> list[int]:
    """Ids of an answer as the model writes it after the prompt (the training target, before eos)."""
    if family.name == "chatglm3":
        return tokenizer.encode("\n", add_special_tokens=False) + tokenizer.encode(text, add_special_tokens=False)
    if family.name == "glm4":
        return tokenizer.encode("\n" + text, add_special_tokens=False)
    return tokenizer.encode(text, add_special_tokens=False)


def answer_end_id(family: GlmFamily, tokenizer: Any) -> int:
    """The id that ends a training answer: eos (ChatGLM2/3 finetune demos append eos); GLM-4's
    finetune demo appends <|user|> (151336, "EOS for chat")."""
    return tokenizer.special_ids["<|user|>"] if family.name == "glm4" else tokenizer.eos_token_id


def stop_ids(family: GlmFamily, tokenizer: Any) -> list[int]:
    """Ids that end a generation: eos, then the family's stop specials (<|user|>, <|observation|>)."""
    return list(dict.fromkeys([tokenizer.eos_token_id, *(tokenizer.special_ids[t] for t in family.stop_tokens)]))


# -- tool calls ---------------------------------------------------------------------------------

def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, type(None), int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_py_literal(str(k))}: {_py_literal(v)}" for k, v in value.items()) + "}"
    raise ChatFormatError(f"tool argument {value!r:.60} is not JSON-like (str, number, bool, null, list, dict)")


def format_tool_call(family: GlmFamily, call: ToolCall) -> tuple[str, str]:
    """(metadata, content) of an assistant turn holding `call`, as the model writes it."""
    if family.name == "chatglm3":
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call.arguments.items())
        return call.name, f"```python\ntool_call({args})\n```"
    if family.name == "glm4":
        return call.name, json.dumps(call.arguments, ensure_ascii=False)
    raise ChatFormatError(f"{family.display} has no tool calls; serve a ChatGLM3 or GLM-4 base for tools")


def tool_result_message(content: str | Any) -> ChatMessage:
    """The observation turn that returns a tool's result (non-strings as JSON)."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return ChatMessage("observation", text)


def _chatglm3_call(name: str, body: str) -> ToolCall | None:
    lines = body.strip().split("\n")
    code = "\n".join(lines[1:-1]) if lines and lines[0].startswith("```") else body
    try:
        node = ast.parse(code.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tool_call"
                and not node.args and all(k.arg for k in node.keywords)):
            return None
        arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        json.dumps(arguments)  # a set, bytes or Ellipsis is a Python literal but no JSON argument
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return ToolCall(name, arguments)


def _glm4_call(name: str, body: str) -> ToolCall | None:
    try:
        arguments = json.loads(body)
    except json.JSONDecodeError:
        return None
    return ToolCall(name, arguments) if isinstance(arguments, dict) else None


def parse_reply(family: GlmFamily, text: str, strict: bool = False) -> Reply:
    """Content and tool calls of a decoded reply (special tokens kept by name, the prompt's
    <|assistant|> not included). Segments are split at <|assistant|>; a segment whose header line
    names a tool is a call. One that does not parse stays text (as the official servers do), or
    raises ChatFormatError when `strict`."""
    for stop in family.stop_tokens:
        text = text.split(stop, 1)[0]
    if family.chat_format == "rounds":
        return Reply(text)
    contents, calls = [], []
    for segment in text.split("<|assistant|>"):
        metadata, newline, body = segment.partition("\n")
        name = metadata.strip()
        if not newline or not name:
            contents.append(body.strip() if newline else segment.strip())
            continue
        call = (_chatglm3_call if family.name == "chatglm3" else _glm4_call)(name, body.strip())
        if call is None and family.name == "chatglm3" and name == "interpreter":
            lines = body.strip().split("\n")
            fenced = lines[0].startswith("```")
            call = ToolCall("interpreter", {"code": "\n".join(lines[1:-1] if fenced else lines)})
        if call is None:
            if strict:
                raise ChatFormatError(f"{family.display} reply calls {name!r} with arguments that do not parse: "
                                      f"{body.strip()!r:.120}")
            contents.append(segment.strip())
        else:
            calls.append(call)
    return Reply("\n".join(c for c in contents if c), tuple(calls))


def parse_tool_calls(family: GlmFamily, text: str, strict: bool = False) -> list[ToolCall]:
    """The tool calls of a decoded reply (see `parse_reply`)."""
    return list(parse_reply(family, text, strict).tool_calls)


__all__ = ["ChatFormatError", "ChatMessage", "Reply", "Special", "ToolCall", "answer_end_id", "answer_ids", "as_message",
           "format_tool_call", "history_messages", "normalize_tools", "parse_reply", "parse_tool_calls",
           "prompt_ids", "prompt_parts", "prompt_text", "stop_ids", "tool_result_message"]
