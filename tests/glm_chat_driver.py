"""Drive what a small random GLM model generates, so tool-call round trips can be tested end to end.

`force_replies(engine, choose)` makes every row of the engine sample the ids of `choose(request)`
(a text answer, or ToolCalls written the way the family's model writes them), then the family's stop
id. Everything else is the real code: prompts, stop ids, decoding, parsing, HTTP and LangChain.
"""

from __future__ import annotations

from typing import Callable, Sequence

from glmbot.model.chat_format import ToolCall, answer_ids, format_tool_call

Scripted = str | Sequence[ToolCall] | tuple[str, Sequence[ToolCall]]


def reply_ids(family, tok, reply: Scripted) -> list[int]:
    """Ids the model writes after the prompt's <|assistant|> for a text answer, tool calls, or
    (text, calls): text, then the calls in new <|assistant|> segments; the stop id included."""
    if isinstance(reply, str):
        return answer_ids(family, tok, reply) + [tok.eos_token_id]
    ids: list[int] = []
    if isinstance(reply, tuple):
        text, reply = reply
        ids = answer_ids(family, tok, text) + [tok.special_ids["<|assistant|>"]]
    for i, call in enumerate(reply):
        metadata, content = format_tool_call(family, call)
        if i:
            ids.append(tok.special_ids["<|assistant|>"])
        if family.name == "chatglm3":
            ids += tok.encode(f"{metadata}\n", add_special_tokens=False) + tok.encode(content, add_special_tokens=False)
        else:
            ids += tok.encode(f"{metadata}\n{content}", add_special_tokens=False)
    return ids + [tok.special_ids["<|observation|>"]]


def force_replies(engine, choose: Callable[[object], Scripted]) -> list:
    """Every request's tokens come from choose(request); returns the list of requests seen (in order)."""
    sched, real, seen = engine.scheduler, engine.scheduler._advance, []

    def advance(row, token, finite, now):
        script = getattr(row, "_script", None)
        if script is None:
            seen.append(row.job.handle.request)
            script = row._script = reply_ids(engine.family, engine.tokenizer, choose(row.job.handle.request))
        real(row, script[row.sampled] if row.sampled < len(script) else token, finite, now)

    sched._advance = advance
    return seen
