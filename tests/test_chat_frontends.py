"""What OpenAI-compatible chat front ends (Open WebUI and similar) send, made with the openai client:
the model list, streamed answers of a domain, and their background requests (title, tags,
follow-ups), which must reach the plain base model, not the chat's domain prefix."""

from __future__ import annotations

import pytest
from test_server import client, direct, engine, registry, server, user  # noqa: F401

from glmbot.http.background import background_task

# Open WebUI's default title, tags and follow-up task prompts (backend/open_webui/config.py), shortened to
# fit the tiny test engine's 256-token context: the header, the task line, the quoted chat.
HISTORY = "<chat_history>\nUSER: 退货多久到账？\nASSISTANT: 一般三到五个工作日。\n</chat_history>"
TITLE_TASK = "### Task:\nGenerate a concise, 3-5 word title summarizing the chat history.\n" + HISTORY
TAGS_TASK = "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history.\n" + HISTORY
FOLLOW_UP_TASK = ("### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might naturally ask "
                  "next in this conversation as a **user**\n### Chat History:\n" + HISTORY)


@pytest.mark.parametrize("prompt, kind", [(TITLE_TASK, "title"), (TAGS_TASK, "tags"), (FOLLOW_UP_TASK, "follow_up"),
                                          ("### Task:\nAnything else\n" + HISTORY, "task")])
def test_task_prompts_are_recognised_by_kind(prompt, kind):
    assert background_task(user(prompt)) == kind


@pytest.mark.parametrize("prompt", ["退货多久到账？", "### Task:\nno chat history quoted", HISTORY,
                                    "请看 ### Task:\n" + HISTORY])
def test_a_users_own_turn_is_not_a_background_task(prompt):
    assert background_task(user(prompt)) is None
    # only the last user message counts: an earlier task prompt in the history does not make the turn one
    assert background_task([*user(TITLE_TASK), {"role": "assistant", "content": "x"}, *user(prompt)]) is None


def test_the_model_list_offers_each_domain_as_a_model_id(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["base", "auto", "ads", "support"]


def test_a_streamed_domain_answer_arrives_in_pieces_equal_to_the_engines(client, engine):
    chunks = list(client.chat.completions.create(model="support", messages=user("退货多久到账？"), stream=True,
                                                 temperature=0, max_tokens=24, extra_body={"ignore_eos": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == direct(engine, user("退货多久到账？"), "support", max_new_tokens=24, ignore_eos=True)
    assert chunks[-1].glmbot["adapter"] == "support@v1"


@pytest.mark.parametrize("task", [TITLE_TASK, TAGS_TASK], ids=["title", "tags"])
def test_a_background_request_named_with_a_domain_is_answered_by_the_plain_base(client, engine, task):
    # as Open WebUI sends it: the chat's model id, not streamed, max_completion_tokens 1000 (above this
    # server's 512 limit: held to the limits instead of refused)
    reply = client.chat.completions.create(model="support", messages=user(task), max_completion_tokens=1000,
                                           temperature=0)
    assert reply.glmbot["domain"] is None and reply.glmbot["adapter"] is None
    answer = direct(engine, user(task), "base", max_new_tokens=reply.usage.completion_tokens)
    assert reply.choices[0].message.content == answer
    # the same words as a user's own turn go to the domain asked for
    plain = client.chat.completions.create(model="support", messages=user(task.replace("### Task:", "Task:")),
                                           max_tokens=8, temperature=0)
    assert plain.glmbot["adapter"] == "support@v1"
