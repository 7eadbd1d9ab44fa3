"""The OpenAI-style API on ChatGLM3 and GLM-4 bases: tools, tool_choice, tool_calls (whole and streamed), tool
results, the system role, and the base family in /v1/models and /health. The official openai client
talks to the real server over a small random model of each family whose output is driven (tests.glm_chat_driver);
prompts, stop ids, parsing and the response formats are the real code."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from glmbot.config import Settings
from glmbot.http import ServerThread, create_app
from glmbot.model.chat_format import ToolCall, prompt_ids
from glmbot.serving.engine import Engine
from tests.conftest import small_model
from tests.glm_chat_driver import force_replies

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PARIS = ToolCall("get_weather", {"city": "Paris"})


def scripted(request) -> str | list[ToolCall]:
    """A call when tools are offered and the user just asked; the final answer after a tool result."""
    last = request.messages[-1]
    if last["role"] == "tool":
        return "晴"
    return [PARIS] if request.tools else "你好"


SHAPES = {"chatglm3": ("tok3", {"padded_vocab_size": 64896}),
          "glm4": ("tok4", {"padded_vocab_size": 151552, "hidden_size": 32, "ffn_hidden_size": 48, "kv_channels": 8,
                            "rope_ratio": 500})}


@pytest.fixture(scope="module", params=list(SHAPES))
def served(request):
    tok_name, shape = SHAPES[request.param]
    tok = request.getfixturevalue(tok_name)
    model = small_model(5, glm_family=request.param, seq_length=1024, **shape)
    with Engine(model, tok, settings=Settings(), max_batch_size=4, max_len=1024) as engine:
        seen = force_replies(engine, scripted)
        with ServerThread(create_app(engine, settings=engine.settings)) as server:
            yield engine, server, seen


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[1].url + "/v1", api_key="unused", max_retries=0)


def test_models_and_health_name_the_base_family(served, client):
    cards = client.models.list().data
    assert {c.id for c in cards} == {"base", "auto"}
    family = served[0].family.name
    assert all(c.model_extra["glmbot"]["base_family"] == family for c in cards)
    assert cards[0].model_extra["glmbot"]["tools"] is True
    assert httpx.get(served[1].url + "/health").json()["base_family"] == family


def test_bad_tool_messages_get_a_400(served):
    url = served[1].url + "/v1/chat/completions"
    ends_with_assistant = {"model": "base", "messages": [{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"}]}
    reply = httpx.post(url, json=ends_with_assistant)
    assert reply.status_code == 400 and "last message must come from the user" in reply.json()["error"]["message"]
    bad_args = {"model": "base", "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "r"}]}
    reply = httpx.post(url, json=bad_args)
    assert reply.status_code == 400 and "arguments of 'f' are not JSON" in reply.json()["error"]["message"]
    null_user = {"model": "base", "messages": [{"role": "user", "content": None}]}
    assert "only an assistant message with tool_calls" in httpx.post(url, json=null_user).json()["error"]["message"]


def test_tool_call_round_trip(served, client):
    engine, _, seen = served
    messages = [{"role": "system", "content": "你好"}, {"role": "user", "content": "巴黎天气"}]
    first = client.chat.completions.create(model="base", messages=messages, tools=[WEATHER], max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the system message is native: the prompt is the ChatGLM3 role prompt with the tools in the system turn
    assert first.usage.prompt_tokens == len(prompt_ids(engine.family, engine.tokenizer, messages, [WEATHER]))
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    second = client.chat.completions.create(model="base", messages=messages, tools=[WEATHER], max_tokens=80)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content == "晴"
    assert second.choices[0].message.tool_calls is None
    sent = seen[-1].messages
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather" and sent[-1]["role"] == "tool"


def test_streamed_tool_calls_use_openai_deltas(client):
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "天气"}],
                                            tools=[WEATHER, TIME], max_tokens=80, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and not any(d.content for d in deltas)
    calls = [tc for d in deltas for tc in (d.tool_calls or ())]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
        [(0, "get_weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_plain_answers_stream_as_text(client):
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "在吗"}],
                                            max_tokens=20, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "你好"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_choice_none_and_named(served, client):
    _, _, seen = served
    answer = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "天气"}],
                                            tools=[WEATHER], tool_choice="none", max_tokens=20)
    assert answer.choices[0].message.content == "你好" and seen[-1].tools is None
    named = {"type": "function", "function": {"name": "get_time"}}
    client.chat.completions.create(model="base", messages=[{"role": "user", "content": "几点"}],
                                   tools=[WEATHER, TIME], tool_choice=named, max_tokens=80)
    assert [t["function"]["name"] for t in seen[-1].tools] == ["get_time"]


def test_langchain_over_http_gets_the_tool_calls(served):
    from langchain_core.messages import HumanMessage, ToolMessage

    from glmbot.integrations.langchain import ChatGlmbot

    model = ChatGlmbot(base_url=served[1].url, domain="base", max_new_tokens=80).bind_tools([WEATHER])
    reply = model.invoke("天气")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    chunks = list(model.stream("天气"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Paris"})]
    final = model.invoke([HumanMessage("天气"), reply, ToolMessage("sunny", tool_call_id=reply.tool_calls[0]["id"])])
    assert final.content == "晴" and final.tool_calls == []
