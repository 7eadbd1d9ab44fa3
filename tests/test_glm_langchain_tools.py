"""ChatGlmbot on a ChatGLM3 base: native system messages, bind_tools, AIMessage.tool_calls, ToolMessage,
and a LangChain 1.x agent (create_agent, two tools) doing a tool round trip. The small random model's
output is driven (tests.glm_chat_driver); conversion, prompts, parsing and the agent loop are real."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from glmbot.errors import GenerationError
from glmbot.integrations.langchain import ChatGlmbot
from glmbot.model.chat_format import ToolCall, prompt_ids
from glmbot.serving.engine import Engine
from tests.conftest import small_model
from tests.glm_chat_driver import force_replies


@tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"{city}: sunny"


@tool
def get_time(city: str) -> str:
    """The local time in a city."""
    return f"{city}: 10:00"


def scripted(request):
    last = request.messages[-1]
    if last["role"] == "tool":  # the agent sent the tool's result back
        return f"答：{last['content']}"
    return [ToolCall("get_weather", {"city": "Paris"})] if request.tools else "你好"


@pytest.fixture(scope="module")
def driven(tok3):
    model = small_model(6, glm_family="chatglm3", padded_vocab_size=64896, seq_length=2048)
    with Engine(model, tok3, max_batch_size=4, max_len=2048) as engine:
        seen = force_replies(engine, scripted)
        yield engine, seen


def test_system_message_is_native(driven):
    engine, seen = driven
    reply = ChatGlmbot(engine=engine, domain="base", max_new_tokens=64).invoke([SystemMessage("简短"), HumanMessage("在吗")])
    assert reply.content == "你好" and reply.tool_calls == []
    assert seen[-1].messages[0] == {"role": "system", "content": "简短"}
    ids = prompt_ids(engine.family, engine.tokenizer, seen[-1].messages)
    assert reply.usage_metadata["input_tokens"] == len(ids) and engine.tokenizer.special_ids["<|system|>"] in ids


def test_bind_tools_fills_tool_calls_and_takes_tool_messages(driven):
    engine, seen = driven
    model = ChatGlmbot(engine=engine, domain="base", max_new_tokens=64).bind_tools([get_weather, get_time])
    reply = model.invoke("巴黎天气？")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.content == ""
    assert [t["function"]["name"] for t in seen[-1].tools] == ["get_weather", "get_time"]
    assert seen[-1].tools[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    result = ToolMessage("Paris: sunny", tool_call_id=reply.tool_calls[0]["id"])
    final = model.invoke([HumanMessage("巴黎天气？"), reply, result])
    assert final.content == "答：Paris: sunny" and final.tool_calls == []
    assert seen[-1].messages[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris"}'}
    # streamed: the calls arrive as tool-call chunks on the last chunk
    chunks = list(model.stream("巴黎天气？"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Paris"})]
    only_time = ChatGlmbot(engine=engine, domain="base", max_new_tokens=64).bind_tools([get_weather, get_time], tool_choice="get_time")
    only_time.invoke("几点")
    assert [t["function"]["name"] for t in seen[-1].tools] == ["get_time"]


def test_create_agent_runs_a_tool_round_trip(driven):
    engine, seen = driven
    agent = create_agent(ChatGlmbot(engine=engine, domain="base", max_new_tokens=64), tools=[get_weather, get_time],
                         system_prompt="你是天气助手")
    state = agent.invoke({"messages": [{"role": "user", "content": "巴黎天气？"}]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    call, tool_result, final = state["messages"][1:]
    assert call.tool_calls[0]["name"] == "get_weather" and tool_result.content == "Paris: sunny"
    assert tool_result.tool_call_id == call.tool_calls[0]["id"]
    assert isinstance(final, AIMessage) and final.content == "答：Paris: sunny"
    # the second model call saw the system prompt natively, the call and its result
    roles = [m["role"] for m in seen[-1].messages]
    assert roles == ["system", "user", "assistant", "tool"] and seen[-1].messages[0]["content"] == "你是天气助手"


def test_chatglm2_refuses_bind_tools():
    from glmbot import load_base

    model, tok = load_base("builtin:tiny", device="cpu")
    with Engine(model, tok, max_batch_size=2, max_len=64) as engine:
        with pytest.raises(GenerationError, match="ChatGLM2, which has no tool calls.*ChatGLM3 or GLM-4"):
            ChatGlmbot(engine=engine).bind_tools([get_weather])
        with pytest.raises(GenerationError, match="ChatGLM3 or GLM-4"):
            ChatGlmbot(engine=engine, domain="base", max_new_tokens=64).invoke(
                [HumanMessage("a"), AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}]),
                 ToolMessage("b", tool_call_id="1")])
