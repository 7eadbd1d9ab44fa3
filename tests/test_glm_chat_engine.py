"""The engine on ChatGLM3/GLM-4 bases: role prompts with a native system turn, the family's stop ids,
tools in the prompt and tool calls parsed from the reply (generation driven, parsing real)."""

from __future__ import annotations

import pytest

from glmbot.errors import GenerationError
from glmbot.model.chat_format import ToolCall, prompt_ids
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest, chat_turns
from tests.conftest import small_model
from tests.glm_chat_driver import force_replies

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
CONFIGS = {"chatglm3": ("tok3", {"padded_vocab_size": 64896, "seq_length": 1024}),
           "glm4": ("tok4", {"padded_vocab_size": 151552, "hidden_size": 32, "ffn_hidden_size": 48,
                             "kv_channels": 8, "rope_ratio": 500, "seq_length": 1024})}


@pytest.fixture(params=list(CONFIGS))
def engine(request):
    tok_name, config = CONFIGS[request.param]
    tok = request.getfixturevalue(tok_name)
    with Engine(small_model(3, glm_family=request.param, **config), tok, max_batch_size=4, max_len=1024) as e:
        yield e


def test_system_prompt_is_native_and_stop_ids_are_the_familys(engine):
    tok, family = engine.tokenizer, engine.family
    assert engine.scheduler.stop_ids == {tok.eos_token_id, tok.special_ids["<|user|>"],
                                         tok.special_ids["<|observation|>"]}
    messages = [{"role": "system", "content": "你好"}, {"role": "user", "content": "在吗"}]
    seen = force_replies(engine, lambda req: "你好")
    result = engine.generate(GenerationRequest(messages=messages, max_new_tokens=20))
    assert result.text == "你好" and result.tool_calls == () and result.finish_reason == "stop"
    assert result.usage.prompt_tokens == len(prompt_ids(family, tok, messages))
    assert tok.special_ids["<|system|>"] in prompt_ids(family, tok, messages)
    # request.system is the same as a leading system message; the query form too
    same = engine.generate(GenerationRequest(messages=messages[1:], system="你好", max_new_tokens=20))
    query = engine.generate(GenerationRequest(query="在吗", system="你好", max_new_tokens=20))
    assert same.usage.prompt_tokens == query.usage.prompt_tokens == result.usage.prompt_tokens
    assert len(seen) == 3
    assert chat_turns(GenerationRequest(messages=messages), family) == ("在吗", [])


def test_tool_call_is_parsed_and_never_streamed_as_text(engine):
    call = ToolCall("get_weather", {"city": "Paris"})
    force_replies(engine, lambda req: [call] if req.messages[-1]["role"] == "user" else "晴")
    messages = [{"role": "user", "content": "天气"}]
    handle = engine.submit(GenerationRequest(messages=messages, tools=[WEATHER], max_new_tokens=60))
    assert list(handle.stream()) == []
    result = handle.result()
    assert result.tool_calls == (call,) and result.text == "" and result.finish_reason == "stop"
    # the observation id ended it, not the length
    assert result.usage.completion_tokens < 60
    # the round trip: the call in the history, the result as a tool message
    messages += [{"role": "assistant", "content": "",
                  "tool_calls": [{"id": "c1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    handle = engine.submit(GenerationRequest(messages=messages, tools=[WEATHER], max_new_tokens=60))
    assert "".join(handle.stream()) == "晴" and handle.result().tool_calls == ()
    tok = engine.tokenizer
    assert handle.result().usage.prompt_tokens == len(prompt_ids(engine.family, tok, messages, [WEATHER]))


def test_with_tools_a_text_answer_streams_and_a_call_after_text_is_never_shown(engine):
    answer = "你好，在的。" * 3
    call = ToolCall("get_weather", {"city": "Oslo"})
    force_replies(engine, lambda req: answer if req.query == "在吗" else ("稍等", [call]))
    handle = engine.submit(GenerationRequest(query="在吗", tools=[WEATHER], max_new_tokens=100))
    chunks = list(handle.stream())
    assert len(chunks) > 1 and "".join(chunks) == handle.result().text == answer
    handle = engine.submit(GenerationRequest(query="天气", tools=[WEATHER], max_new_tokens=100))
    assert "".join(handle.stream()) == "稍等" == handle.result().text
    assert handle.result().tool_calls == (call,)


def test_two_calls_in_one_reply(engine):
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Oslo"})]
    force_replies(engine, lambda req: calls)
    result = engine.generate(GenerationRequest(query="天气", tools=[WEATHER], max_new_tokens=100))
    assert list(result.tool_calls) == calls


def test_chatglm2_refuses_tools(sp_model_file):
    from glmbot.model.tokenizer import ChatGLMTokenizer

    tokenizer = ChatGLMTokenizer(sp_model_file)
    with Engine(small_model(1), tokenizer, max_batch_size=2, max_len=64) as engine:
        assert engine.family.name == "chatglm2" and engine.scheduler.stop_ids == {tokenizer.eos_token_id}
        with pytest.raises(GenerationError, match="ChatGLM3 or GLM-4"):
            engine.generate(GenerationRequest(query="你好", tools=[WEATHER]))
        with pytest.raises(GenerationError, match="ChatGLM3 or GLM-4"):
            engine.generate(GenerationRequest(messages=[{"role": "user", "content": "a"},
                                                        {"role": "tool", "content": "b"}]))
        # the system text still goes in front of the query, as before
        assert chat_turns(GenerationRequest(query="b", system="a")) == ("ab", [])


def test_glmbot_chat_system_is_native_on_chatglm3(engine):
    from typer.testing import CliRunner

    from glmbot.chat import ChatOptions, ChatSession
    from glmbot.cli import main

    force_replies(engine, lambda req: "你好")
    session = ChatSession(engine, ChatOptions(system="简短回答"))
    request = session.request("在吗")
    result = engine.generate(request)
    session.finish(request, "在吗", result)
    expected = prompt_ids(engine.family, engine.tokenizer, [{"role": "system", "content": "简短回答"},
                                                            {"role": "user", "content": "在吗"}])
    assert result.usage.prompt_tokens == len(expected) and engine.tokenizer.special_ids["<|system|>"] in expected
    second = session.request("再见")
    assert second.messages[0] == {"role": "system", "content": "简短回答"} and len(second.messages) == 4
    help_text = " ".join(CliRunner().invoke(main.app, ["chat", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "native system turn on ChatGLM3/GLM-4" in help_text and "in front of each question" in help_text


def test_stop_strings_cut_a_text_answer_but_never_a_tool_call(engine):
    call = ToolCall("get_weather", {"city": "Paris"})
    force_replies(engine, lambda req: [call] if req.query == "天气" else "你好，在的。今天不错")
    # "Paris" and "weather" occur in the call's text: the call still comes back whole
    result = engine.generate(GenerationRequest(query="天气", tools=[WEATHER], stop=["Paris", "weather"],
                                               max_new_tokens=60))
    assert result.tool_calls == (call,) and result.text == "" and result.finish_reason == "stop"
    handle = engine.submit(GenerationRequest(query="在吗", tools=[WEATHER], stop=["。"], max_new_tokens=60))
    assert "".join(handle.stream()) == "你好，在的" == handle.result().text
    assert handle.result().finish_reason == "stop" and handle.result().usage.completion_tokens < 20


def test_a_stop_string_in_a_first_line_still_held_ends_as_stop_not_length(engine):
    """A reply whose first line never completes stays held in case it is a call; a stop string in
    it still cuts the text, and the request ends with finish reason "stop"."""
    tok, script = engine.tokenizer, engine.tokenizer.encode("晴。好", add_special_tokens=False)
    real = engine.scheduler._advance
    engine.scheduler._advance = lambda row, token, finite, now: real(
        row, script[row.sampled] if row.sampled < len(script) else token, finite, now)
    result = engine.generate(GenerationRequest(query="天气", tools=[WEATHER], stop=["。"],
                                               max_new_tokens=len(script)))
    assert result.text == "晴" and result.tool_calls == () and result.finish_reason == "stop"
    assert tok.decode(list(result.token_ids)) == "晴。好"
