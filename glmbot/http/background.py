"""Background requests of chat front ends (Open WebUI and the like): recognised, and sent to the plain base.

Besides the user's own turns, Open WebUI asks the chat's model for a title, tags, follow-up
questions, search queries... Each such request is one user message holding a task prompt filled
from its templates (backend/open_webui/config.py: DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE,
..._TAGS_..., ..._FOLLOW_UP_..., ..._QUERY_...), all of the shape

    ### Task:
    Generate a concise, 3-5 word title ...
    ### Chat History:
    <chat_history>
    USER: ...
    </chat_history>

sent with the chat's model id (a glmbot domain), stream false and max_completion_tokens 1000 (its
`metadata.task` stays inside Open WebUI). A domain prefix trained on support answers would answer
the task with a support answer; the plain base at least tries the task. So such a request goes to
the plain base whatever its model names, and its token budget is held to what fits instead of
being refused (docs/HTTP_API.md, "Chat front ends").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The task prompt starts with the '### Task:' header and quotes the chat between <chat_history> tags.
_TASK_HEADER = re.compile(r"\A\s*###\s*Task:\s*\n")
_CHAT_HISTORY = re.compile(r"<chat_history>.*</chat_history>", re.S)
_KINDS = (("title", re.compile(r"\btitle\b", re.I)), ("tags", re.compile(r"\btags?\b", re.I)),
          ("follow_up", re.compile(r"follow-up", re.I)), ("query", re.compile(r"\bquer(y|ies)\b", re.I)))


def background_task(messages: Sequence[dict[str, str]]) -> str | None:
    """'title', 'tags', 'follow_up', 'query' or 'task' when the last user message is a front end's
    task prompt (see the module docstring); None for a user's own turn."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
        return None
    text = users[-1]
    if not _TASK_HEADER.match(text) or not _CHAT_HISTORY.search(text):
        return None
    task_line = text[_TASK_HEADER.match(text).end():].split("\n", 1)[0]
    for kind, pattern in _KINDS:
        if pattern.search(task_line):
            return kind
    return "task"
