"""LangChain chat model over the in-process engine: LCEL, streaming, batch, conversation memory."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from glmbot import load_base
from glmbot.errors import GenerationError
from glmbot.integrations.langchain import ChatGlmbot, GlmbotLLM
from glmbot.model.prefix import PrefixEncoder
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest

GREEDY = {"do_sample": False, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def engine():
    import torch

    model, tok = load_base("builtin:tiny", device="cpu")
    prefixes = {}
    for i, name in enumerate(("support", "ads")):
        torch.manual_seed(i)
        enc = PrefixEncoder(model.config, 8 + 4 * i)
        with torch.no_grad():
            enc.embedding.weight.normal_(0, 0.5)
        prefixes[name] = enc.kv().detach()
    with Engine(model, tok, prefixes=prefixes, max_batch_size=8, max_len=256) as eng:
        yield eng


def direct(engine, messages, domain=None):
    return engine.generate(GenerationRequest(messages=messages, domain=domain, **GREEDY)).text


def test_lcel_chain_with_prompt_template_and_parser(engine):
    prompt = ChatPromptTemplate.from_messages([("human", "请问{topic}？")])
    chain = prompt | ChatGlmbot(engine=engine, domain="support", **GREEDY) | StrOutputParser()
    assert chain.invoke({"topic": "多久发货"}) == direct(engine, [{"role": "user", "content": "请问多久发货？"}], "support")


def test_metadata_carries_route_and_usage(engine):
    msg = ChatGlmbot(engine=engine, **GREEDY).invoke("类型#裙*颜色#白色", domain="ads")
    assert isinstance(msg, AIMessage)
    assert msg.response_metadata["adapter"] == "ads" and msg.response_metadata["route_reason"] == "explicit"
    assert msg.usage_metadata["input_tokens"] > 0 and msg.usage_metadata["output_tokens"] > 0


def test_stream_and_astream_equal_invoke_and_fire_callbacks(engine):
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    model = ChatGlmbot(engine=engine, domain="support", **GREEDY)
    full = model.invoke("退货多久到账？").content
    handler = Tokens()
    chunks = list(model.stream("退货多久到账？", config={"callbacks": [handler]}))
    assert "".join(c.content for c in chunks) == full == "".join(handler.tokens)
    assert chunks[-1].usage_metadata["output_tokens"] > 0

    async def collect():
        return "".join([c.content async for c in model.astream("退货多久到账？")])

    assert asyncio.run(collect()) == full


def test_batch_of_mixed_domains_goes_through_the_engine(engine):
    model = ChatGlmbot(engine=engine, **GREEDY)
    bound = [model.bind(domain=d) for d in ("support", "ads", "base")]
    answers = [b.invoke("在吗") for b in bound]
    assert [a.content for a in answers] == [direct(engine, [{"role": "user", "content": "在吗"}], d)
                                            for d in ("support", "ads", "base")]
    configurable = model.configurable_fields(domain=ConfigurableField(id="domain"))
    batch = configurable.batch(["在吗"] * 3, config=[{"configurable": {"domain": d}} for d in ("support", "ads", "base")])
    assert [m.content for m in batch] == [a.content for a in answers]


def test_langgraph_memory_maps_to_official_rounds(engine):
    # LangGraph's checkpointer is what langchain-core 1.x names in place of RunnableWithMessageHistory.
    chat = ChatGlmbot(engine=engine, domain="support", **GREEDY)
    graph = StateGraph(MessagesState)
    graph.add_node("respond", lambda state: {"messages": [chat.invoke(state["messages"])]})
    graph.add_edge(START, "respond")
    app = graph.compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "s1"}}
    first = app.invoke({"messages": [HumanMessage("你好")]}, thread)["messages"][-1].content
    state = app.invoke({"messages": [HumanMessage("退货多久到账？")]}, thread)
    assert state["messages"][-1].content == direct(engine, [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "退货多久到账？"}], "support")
    assert len(state["messages"]) == 4
    other = app.invoke({"messages": [HumanMessage("退货多久到账？")]}, {"configurable": {"thread_id": "s2"}})
    assert len(other["messages"]) == 2  # threads do not share history


def test_a_message_list_is_the_conversation(engine):
    chat = ChatGlmbot(engine=engine, domain="support", **GREEDY)
    history = [HumanMessage("你好")]
    history.append(chat.invoke(history))
    history.append(HumanMessage("退货多久到账？"))
    assert chat.invoke(history).content == direct(engine, [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": history[1].content},
        {"role": "user", "content": "退货多久到账？"}], "support")


def test_system_message_goes_in_front_of_the_question(engine):
    model = ChatGlmbot(engine=engine, domain="base", **GREEDY)
    got = model.invoke([SystemMessage("请简短回答。"), HumanMessage("你好")]).content
    assert got == direct(engine, [{"role": "user", "content": "请简短回答。你好"}], "base")


def test_string_llm_and_bad_options(engine):
    llm = GlmbotLLM(engine=engine, domain="support", do_sample=False, max_new_tokens=24)
    assert llm.invoke("你好") == direct(engine, [{"role": "user", "content": "你好"}], "support")
    with pytest.raises(GenerationError, match="unknown option"):
        ChatGlmbot(engine=engine).invoke("你好", colour="red")


def test_no_arguments_share_one_engine_built_from_glmbot_toml(tmp_path, monkeypatch):
    import glmbot
    from glmbot import stack
    from tests.cli_helpers import project_with_adapters

    config = project_with_adapters(tmp_path)
    monkeypatch.setenv("GLMBOT_CONFIG", str(config))
    monkeypatch.setattr(stack, "_shared", {})
    chat, llm = ChatGlmbot(**GREEDY), GlmbotLLM(do_sample=False, max_new_tokens=24)
    assert stack._shared == {}  # nothing is built before the first call
    reply = chat.invoke("退货多久到账？")
    engine = glmbot.shared_engine()
    try:
        assert list(stack._shared.values()) == [engine] and llm.invoke("你好") and engine.stats().finished
        assert reply.response_metadata["adapter"] == "support@v1" and reply.response_metadata["domain"] == "support"
        assert reply.content == direct(engine, [{"role": "user", "content": "退货多久到账？"}])
        assert ChatGlmbot(config=str(config), domain="ads", **GREEDY).invoke("类型#裙*颜色#白色").response_metadata["adapter"] \
            == "ads@v1"
        assert len(stack._shared) == 1  # the same file: the same engine
    finally:
        engine.close()
    assert "shared_engine" in glmbot.__all__ and "engine_from_config" in glmbot.__all__


def test_server_and_engine_together_are_refused(engine):
    with pytest.raises(GenerationError, match="base_url='http://127.0.0.1:8000' and engine="):
        ChatGlmbot(engine=engine, base_url="http://127.0.0.1:8000")
    with pytest.raises(GenerationError, match="and config='glmbot.toml'"):
        ChatGlmbot(config="glmbot.toml", base_url="http://127.0.0.1:8000")


def test_a_server_that_is_not_running_is_named_with_the_fix():
    """Found by a newcomer: ChatGlmbot(base_url=...) with no server raised httpx's bare "[Errno 111]
    Connection refused"."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ChatGlmbot(base_url=f"http://127.0.0.1:{port}")

    async def first_chunk():
        async for chunk in model.astream("你好"):
            return chunk

    for call in (lambda: model.invoke("你好"), lambda: next(iter(model.stream("你好"))),
                 lambda: asyncio.run(first_chunk())):
        with pytest.raises(GenerationError, match=f"cannot reach a glmbot server at http://127.0.0.1:{port}/v1.*"
                                                  "start one with `glmbot serve`"):
            call()
