"""Chat formats of the GLM family (glmbot.model.chat_format): prompts, stop ids, tool calls.

Reference strings come from the official files: THUDM/ChatGLM3 PROMPT.md and
openai_api_demo/utils.py, the chatglm3-6b tokenizer's build_chat_input, and the chat_template of
THUDM/glm-4-9b-chat's tokenizer_config.json (its function-tool branch, rendered here with jinja2 the
way transformers renders chat templates: tojson = json.dumps(ensure_ascii=False, indent=4)).
"""

from __future__ import annotations

import json

import jinja2
import pytest

from glmbot.model.chat_format import (
    CHATGLM3_TOOLS_SYSTEM,
    ChatFormatError,
    ChatMessage,
    ToolCall,
    format_tool_call,
    parse_reply,
    parse_tool_calls,
    prompt_ids,
    prompt_text,
    stop_ids,
    tool_result_message,
)
from glmbot.model.family import CHATGLM2, CHATGLM3, GLM4
from glmbot.model.tokenizer import ChatGLMTokenizer

WEATHER = {"name": "get_current_weather", "description": "Get the current weather in a given location",
           "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "城市"},
                                                           "unit": {"type": "string"}}, "required": ["location"]}}
OPENAI_WEATHER = {"type": "function", "function": WEATHER}

# The glm-4-9b-chat chat_template, function tools only (its python/simple_browser/cogview branches left out).
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n你是一个名为 ChatGLM 的人工智能"
    "助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
    "{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}\n\n## "
    "{{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson(indent=4) }}\n在调用上述函数时，请使用 Json 格式表示"
    "调用的参数。{% endif %}{% endfor %}{% endif %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}"
    "\n{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def render_glm4(messages: list[dict]) -> str:
    env = jinja2.Environment()
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    items = [{"metadata": "", **m} for m in messages]
    return env.from_string(GLM4_TEMPLATE).render(messages=items, add_generation_prompt=True)


# -- prompts ------------------------------------------------------------------------------------

def test_chatglm3_multi_turn_prompt_is_the_official_layout(tok3):
    """PROMPT.md "Multi-turn Dialogue" (without the readability newlines before the role tokens)."""
    messages = [{"role": "system", "content": "You are ChatGLM3."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hello, I'm ChatGLM3."}, {"role": "user", "content": "你好"}]
    assert prompt_text(CHATGLM3, messages) == ("[gMASK]sop<|system|>\nYou are ChatGLM3.<|user|>\nHello<|assistant|>\n"
                                               "Hello, I'm ChatGLM3.<|user|>\n你好<|assistant|>")
    # build_single_message: <|role|> + encode(f"{metadata}\n") + encode(content), each encoded on its own
    ids = prompt_ids(CHATGLM3, tok3, messages)
    nl = tok3.encode("\n", add_special_tokens=False)
    assert ids[:3] == [64790, 64792, 64794] and ids[3:5] == nl
    assert ids[-6:] == [64795, *nl, *tok3.encode("你好", add_special_tokens=False), 64796]


def test_chatglm3_tools_go_in_the_system_turn_and_calls_come_back_as_tool_call_blocks(tok3):
    history = [{"role": "user", "content": "What's the weather in Beijing today?"},
               {"role": "assistant", "content": "",
                "tool_calls": [{"id": "call_0", "type": "function", "function": {
                    "name": "get_current_weather", "arguments": json.dumps({"location": "beijing", "unit": "celsius"})}}]},
               {"role": "tool", "content": json.dumps({"temperature": 22})}]
    text = prompt_text(CHATGLM3, history, tools=[OPENAI_WEATHER])
    system = CHATGLM3_TOOLS_SYSTEM + "\n" + json.dumps([WEATHER], indent=4, ensure_ascii=False)
    assert text == ("[gMASK]sop<|system|>\n" + system + "<|user|>\nWhat's the weather in Beijing today?"
                    "<|assistant|>get_current_weather\n```python\ntool_call(location=\"beijing\", unit=\"celsius\")\n```"
                    "<|observation|>\n{\"temperature\": 22}<|assistant|>")
    ids = prompt_ids(CHATGLM3, tok3, history, tools=[OPENAI_WEATHER])
    assert ids.count(64796) == 2 and ids.count(64797) == 1 and ids.count(64794) == 1


def test_chatglm3_system_given_with_tools_carries_them():
    messages = [{"role": "system", "content": "你是天气助手"}, {"role": "user", "content": "北京天气"}]
    assert prompt_text(CHATGLM3, messages, tools=[WEATHER]).startswith(
        "[gMASK]sop<|system|>\n你是天气助手\n[\n    {\n        \"name\": \"get_current_weather\"")


@pytest.mark.parametrize("messages,tools", [
    ([{"role": "user", "content": "你好"}], None),
    ([{"role": "system", "content": "你是客服"}, {"role": "user", "content": "退货"},
      {"role": "assistant", "content": "请提供订单号"}, {"role": "user", "content": "123"}], None),
    ([{"role": "user", "content": "北京天气"}], [OPENAI_WEATHER]),
])
def test_glm4_prompt_equals_the_official_chat_template(messages, tools):
    official = [{"role": "system", "content": "", "tools": tools}] + messages if tools else messages
    assert prompt_text(GLM4, messages, tools=tools) == render_glm4(official)


def test_glm4_tool_round_trip_matches_the_template_and_the_hello_vector(tok4):
    call = ToolCall("get_current_weather", {"location": "北京"})
    history = [{"role": "user", "content": "北京天气"},
               ChatMessage("assistant", tool_calls=(call,)), tool_result_message({"temperature": 22})]
    official = [{"role": "system", "content": "", "tools": [OPENAI_WEATHER]}, history[0],
                {"role": "assistant", "metadata": "get_current_weather", "content": '{"location": "北京"}'},
                {"role": "observation", "content": '{"temperature": 22}'}]
    assert prompt_text(GLM4, history, tools=[OPENAI_WEATHER]) == render_glm4(official)
    assert prompt_ids(GLM4, tok4, [{"role": "user", "content": "你好"}]) == [151331, 151333, 151336, 198, 109377, 151337]


def test_chatglm2_keeps_rounds_with_the_system_text_in_front_and_refuses_tools(sp_model_file):
    tok = ChatGLMTokenizer(sp_model_file)
    messages = [{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "在吗"}]
    assert prompt_text(CHATGLM2, messages) == "[gMASK]sop[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：你是客服。在吗\n\n答："
    assert prompt_ids(CHATGLM2, tok, messages) == tok.encode(
        "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：你是客服。在吗\n\n答：")
    with pytest.raises(ChatFormatError, match="ChatGLM2 has no tool calls"):
        prompt_text(CHATGLM2, messages, tools=[WEATHER])
    with pytest.raises(ChatFormatError, match="two user messages"):
        prompt_text(CHATGLM2, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_bad_conversations_are_refused_naming_the_problem():
    with pytest.raises(ChatFormatError, match="last message must be a user message"):
        prompt_text(CHATGLM3, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ChatFormatError, match="roles are system, user, assistant"):
        prompt_text(GLM4, [{"role": "robot", "content": "a"}])
    with pytest.raises(ChatFormatError, match="no function name"):
        prompt_text(GLM4, [{"role": "user", "content": "a"}], tools=[{"type": "function", "function": {}}])
    with pytest.raises(ChatFormatError, match="not JSON"):
        prompt_text(GLM4, [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
                           {"role": "tool", "content": "1"}])


def test_stop_ids_per_family(tok3, tok4, sp_model_file):
    assert stop_ids(CHATGLM3, tok3) == [2, 64795, 64797]  # openai_api_demo/utils.py
    assert stop_ids(GLM4, tok4) == [151329, 151336, 151338]  # basic_demo glm_server.py stop_token_ids
    assert stop_ids(CHATGLM2, ChatGLMTokenizer(sp_model_file)) == [2]


# -- replies ------------------------------------------------------------------------------------

def test_chatglm3_reply_parsing():
    text = 'get_current_weather\n```python\ntool_call(location="beijing", unit="celsius")\n```'
    assert parse_tool_calls(CHATGLM3, text) == [ToolCall("get_current_weather", {"location": "beijing",
                                                                                "unit": "celsius"})]
    both = parse_reply(CHATGLM3, "\nOkay, let's look it up.<|assistant|>" + text + "<|observation|>")
    assert both.content == "Okay, let's look it up." and both.tool_calls[0].arguments["unit"] == "celsius"
    assert parse_reply(CHATGLM3, "\n你好，我是 ChatGLM3。").content == "你好，我是 ChatGLM3。"
    nested = "f\n```python\ntool_call(n=3, ok=True, tags=['a', 'b'], opt=None)\n```"
    assert parse_tool_calls(CHATGLM3, nested) == [ToolCall("f", {"n": 3, "ok": True, "tags": ["a", "b"],
                                                                 "opt": None})]
    code = parse_tool_calls(CHATGLM3, "interpreter\n```python\nprint(1)\n```")
    assert code == [ToolCall("interpreter", {"code": "print(1)"})]
    unfenced = parse_tool_calls(CHATGLM3, "interpreter\nprint(1)\nprint(2)")
    assert unfenced == [ToolCall("interpreter", {"code": "print(1)\nprint(2)"})]


def test_glm4_reply_parsing():
    assert parse_tool_calls(GLM4, 'get_current_weather\n{"location": "北京"}') == [
        ToolCall("get_current_weather", {"location": "北京"})]
    assert parse_reply(GLM4, "\n北京今天晴。<|user|>").content == "北京今天晴。"


@pytest.mark.parametrize("family", [CHATGLM3, GLM4])
def test_tool_call_formatting_is_the_inverse_of_parsing(family):
    call = ToolCall("book", {"city": "北京", "nights": 2, "vip": False, "rooms": [1, 2], "extra": {"a": None}})
    metadata, content = format_tool_call(family, call)
    assert parse_tool_calls(family, f"{metadata}\n{content}") == [call]


@pytest.mark.parametrize("family,bad", [(CHATGLM3, "f\n```python\ntool_call(x=os.system('rm'))\n```"),
                                        (CHATGLM3, "f\n```python\ntool_call(x={[1]: 2})\n```"),  # TypeError
                                        (CHATGLM3, "f\n```python\ntool_call(tags={'a', 'b'})\n```"),  # no JSON
                                        (CHATGLM3, "f\n```python\ntool_call(x=...)\n```"),
                                        (GLM4, "f\n{not json")])
def test_unparsable_calls_stay_text_or_raise_when_strict(family, bad):
    assert parse_reply(family, bad) == parse_reply(family, bad)  # deterministic
    assert parse_reply(family, bad).tool_calls == () and "f" in parse_reply(family, bad).content
    with pytest.raises(ChatFormatError, match="do not parse"):
        parse_reply(family, bad, strict=True)
