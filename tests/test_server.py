"""The OpenAI-compatible HTTP API on a real uvicorn (127.0.0.1, ephemeral port) over the builtin
tiny base and a registry in tmp_path: the official openai client, streaming, two domains at once,
routing, the conversation log, /v1/models, /health, /metrics and LangChain over HTTP."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from glmbot import load_base
from glmbot.config import settings_from_dict
from glmbot.errors import GenerationError
from glmbot.http import ServerThread, create_app
from glmbot.http.responses import CompletionIds, chunk_body, content_events, sse
from glmbot.integrations.langchain import ChatGlmbot
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix import PrefixEncoder
from glmbot.model.prefix_io import encoder_state
from glmbot.registry import Registry
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest
from glmbot.serving.routing_setup import build_router

KEYWORDS = {"support": "退货", "ads": "文案"}
SERVER = {"max_body_bytes": 4096, "max_tokens_limit": 512}  # the engine's max_len (256) is the lower one
MAX_LEN = 256


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def open_registry(root) -> Registry:
    return Registry(f"sqlite:///{root / 'registry.db'}", root / "adapters", busy_timeout_s=10)


def serving_engine(registry: Registry) -> Engine:
    """The builtin tiny base serving two registered, promoted random prefixes (the caller closes it)."""
    model, tok = load_base("builtin:tiny", device="cpu")
    register_random_domains(registry, model)
    settings = settings_from_dict({"server": SERVER})
    return Engine(model, tok, registry=registry, router=build_router(settings, registry), settings=settings,
                  max_batch_size=16, max_len=MAX_LEN)


def register_random_domains(registry: Registry, model) -> None:
    """Two domains (KEYWORDS), each with a promoted random prefix strong enough to answer differently."""
    for seed, (domain, keyword) in enumerate(KEYWORDS.items()):
        registry.add_domain(domain, keywords=[keyword])
        torch.manual_seed(seed)
        encoder = PrefixEncoder(model.config, 8 + 4 * seed)
        with torch.no_grad():
            encoder.embedding.weight.normal_(0, 3.0)  # strong enough that the domains answer differently
        info = registry.register_adapter(domain, encoder_state(encoder), base_model="builtin:tiny",
                                         base_fingerprint=base_fingerprint(model),
                                         architecture=architecture(model.config))
        registry.promote(info.ref)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with open_registry(tmp_path_factory.mktemp("server")) as reg:
        yield reg


@pytest.fixture(scope="module")
def engine(registry):
    with serving_engine(registry) as eng:
        yield eng


@pytest.fixture(scope="module")
def server(engine, registry):
    app = create_app(engine, settings=engine.settings, registry=registry)
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def direct(engine, messages, model: str, max_new_tokens: int = 32, **kwargs) -> str:
    """The engine's own greedy answer, as the server must give it."""
    target = {"adapter": model} if "@" in model else {"domain": model}
    request = GenerationRequest(messages=messages, do_sample=False, max_new_tokens=max_new_tokens, **target, **kwargs)
    return engine.generate(request).text


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- the official openai client ---------------------------------------------------------------------

def test_models_lists_each_active_domain_plus_base_and_auto(client):
    models = {m.id: m for m in client.models.list()}
    assert list(models) == ["base", "auto", "ads", "support"]
    assert all(m.owned_by == "glmbot" for m in models.values())
    assert models["support"].glmbot == {"kind": "domain", "domain": "support", "adapter": "support@v1", "version": 1,
                                        "base_family": "chatglm2", "base_family_name": "ChatGLM2",
                                        "system_role": False, "tools": False}
    assert client.models.retrieve("ads").glmbot["adapter"] == "ads@v1"


def test_plain_completion_equals_the_engines_greedy_answer(client, engine):
    question = "退货多久到账？"
    answers = {}
    for model in ("support", "ads", "base", "support@v1"):
        reply = client.chat.completions.create(model=model, messages=user(question), temperature=0, max_tokens=32)
        assert reply.object == "chat.completion" and reply.model == model
        assert reply.choices[0].message.content == direct(engine, user(question), model)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
        answers[model] = reply
    assert answers["support"].choices[0].message.content != answers["ads"].choices[0].message.content
    route = answers["support@v1"].glmbot
    assert (route["domain"], route["adapter"], route["adapter_version"], route["reason"]) == \
        ("support", "support@v1", 1, "explicit")
    assert answers["base"].glmbot["domain"] is None and answers["base"].glmbot["adapter"] is None


def test_stream_sends_the_same_text_then_route_and_usage(client, engine):
    question = "写一段文案"
    chunks = list(client.chat.completions.create(model="ads", messages=user(question), temperature=0, max_tokens=32,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct(engine, user(question), "ads")
    last, usage = chunks[-2], chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length") and last.glmbot["adapter"] == "ads@v1"
    assert usage.choices == [] and usage.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, engine):
    reply = client.chat.completions.create(model="support", messages=user("你好"), temperature=0, max_tokens=3,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert reply.glmbot["finish_reason"] == "length"
    assert reply.choices[0].message.content == direct(engine, user("你好"), "support", 3, ignore_eos=True)


def test_two_domains_at_once_from_threads_are_batched_and_match_solo_answers(client, engine):
    plan = [("support", "退货多久到账？"), ("ads", "写一段文案"), ("support", "什么时候发货？"), ("ads", "类型#裙*颜色#白色")] * 2
    solo = {(m, q): direct(engine, user(q), m, 24, ignore_eos=True) for m, q in set(plan)}
    peak_before = engine.stats().peak_rows

    def ask(i: int) -> tuple[str, str]:
        model, question = plan[i]
        kwargs = {"model": model, "messages": user(question), "temperature": 0, "max_tokens": 24,
                  "extra_body": {"ignore_eos": True}}
        if i % 2:
            stream = client.chat.completions.create(stream=True, **kwargs)
            return "".join(c.choices[0].delta.content or "" for c in stream), model
        reply = client.chat.completions.create(**kwargs)
        return reply.choices[0].message.content, reply.glmbot["domain"]

    with ThreadPoolExecutor(len(plan)) as pool:
        answers = list(pool.map(ask, range(len(plan))))
    for (model, question), (text, domain) in zip(plan, answers):
        assert text == solo[(model, question)] and domain == model
    assert engine.stats().peak_rows >= max(peak_before, 2)  # the requests shared decode steps


def test_async_client_serves_two_domains_concurrently(server, engine):
    async def both():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as aclient:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model=m, messages=user("请问多久发货？"), temperature=0, max_tokens=16)
                for m in ("support", "ads")))

    support, ads = asyncio.run(both())
    assert support.choices[0].message.content == direct(engine, user("请问多久发货？"), "support", 16)
    assert ads.choices[0].message.content == direct(engine, user("请问多久发货？"), "ads", 16)


# ---- routing and the conversation log ---------------------------------------------------------------

def test_auto_routes_by_keyword_and_keeps_the_conversation_sticky(client, registry):
    conversation = f"http-test-{time.time_ns()}"
    headers = {"X-Glmbot-Conversation": conversation}
    first = client.chat.completions.create(model="auto", messages=user("我想退货"), temperature=0, max_tokens=8,
                                           extra_headers=headers)
    assert (first.glmbot["domain"], first.glmbot["reason"]) == ("support", "keyword")
    assert first.glmbot["conversation_id"] == conversation
    follow = user("我想退货") + [{"role": "assistant", "content": first.choices[0].message.content},
                              {"role": "user", "content": "多久到账"}]
    second = client.chat.completions.create(model="auto", messages=follow, temperature=0, max_tokens=8, user=conversation)
    assert (second.glmbot["domain"], second.glmbot["reason"]) == ("support", "sticky")
    wait_for(lambda: len(registry.conversation_turns(conversation)) == 2)  # logged on the logging thread
    turns = registry.conversation_turns(conversation)
    assert [t.answer for t in turns] == [first.choices[0].message.content, second.choices[0].message.content]
    assert [t.domain for t in turns] == ["support", "support"] and turns[1].route_reason == "sticky"
    assert {c.source for c in registry.list_conversations() if c.id == conversation} == {"http"}


def test_general_chat_on_auto_falls_back_to_the_plain_base(client, engine):
    reply = client.chat.completions.create(model="auto", messages=user("你好"), temperature=0, max_tokens=16)
    assert reply.glmbot["reason"] == "fallback" and reply.glmbot["domain"] is None
    assert reply.choices[0].message.content == direct(engine, user("你好"), "base", 16)


def test_pre_rendered_content_events_equal_the_encoded_chunk_byte_for_byte():
    ids = CompletionIds("chatcmpl-1", 1700000000, 'support@v2 "quoted" \\ 模型')
    texts = ["", "你好", 'a "quote", a \\ and\nnew lines\t', "\u0000\u001f", "😀 emoji", "</script>"]
    for usage in (False, True):
        content = content_events(ids, with_usage=usage)
        for text in texts:
            assert content(text) == sse(chunk_body(ids, {"content": text}, with_usage=usage)), (usage, text)


# ---- health and metrics -----------------------------------------------------------------------------

def test_health_and_metrics_report_requests_tokens_and_the_prefix_cache(server, client):
    client.chat.completions.create(model="support", messages=user("你好"), temperature=0, max_tokens=4)
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["max_batch_size"] == 16
    text = httpx.get(server.url + "/metrics").text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['glmbot_http_requests_total{model="support",status="200"}'] >= 1
    wait_for(lambda: "glmbot_http_completion_tokens_total{model=\"support\"}" in httpx.get(server.url + "/metrics").text)
    assert samples["glmbot_prefix_cache_hits_total"] >= 1 and samples["glmbot_prefix_cache_misses_total"] == 2
    assert samples['glmbot_http_request_duration_seconds_bucket{le="+Inf"}'] == \
        samples["glmbot_http_request_duration_seconds_count"] >= 1
    assert samples["glmbot_engine_active_rows"] == 0 and "glmbot_engine_decode_tokens_total" in samples
    # every request so far had its prompt prefilled: at least one forward, taking some time
    assert samples["glmbot_engine_prefill_forwards_total"] >= 1 and samples["glmbot_engine_prefill_seconds_total"] > 0
    assert samples["glmbot_engine_prefill_tokens_total"] >= samples["glmbot_engine_prefill_forwards_total"]
    assert samples["glmbot_engine_idle_seconds_total"] > 0  # it waited between this module's requests
    assert "glmbot_engine_mixed_steps_total" in samples  # exported (its count: tests/test_engine.py)
    # no CUDA graphs on the CPU: none replayed, both kinds exported
    assert samples['glmbot_engine_graph_replays_total{forward="prefill"}'] == 0
    assert samples['glmbot_engine_graph_replays_total{forward="mixed"}'] == 0
    # hand-off waits: both outcomes exported (none here: glmbot serve's engine does not wait;
    # tests/test_engine.py counts them)
    assert samples['glmbot_engine_handoff_waits_total{outcome="taken"}'] == 0
    assert samples['glmbot_engine_handoff_waits_total{outcome="missed"}'] == 0
    assert samples["glmbot_engine_handoff_seconds_total"] == 0


# ---- LangChain over HTTP ----------------------------------------------------------------------------

def test_langchain_over_http_matches_the_in_process_model(server, engine):
    options = {"domain": "support", "do_sample": False, "max_new_tokens": 24}
    local = ChatGlmbot(engine=engine, **options).invoke("退货多久到账？")
    remote_model = ChatGlmbot(base_url=server.url, **options)
    remote = remote_model.invoke("退货多久到账？")
    assert remote.content == local.content
    assert remote.response_metadata == local.response_metadata
    assert remote.usage_metadata == local.usage_metadata
    chunks = list(remote_model.stream("退货多久到账？"))
    assert "".join(c.content for c in chunks) == local.content
    assert chunks[-1].response_metadata["adapter"] == "support@v1" and chunks[-1].usage_metadata["output_tokens"] > 0

    async def collect():
        return "".join([c.content async for c in remote_model.astream("退货多久到账？")])

    assert asyncio.run(collect()) == local.content


def test_langchain_over_http_reports_server_errors_and_takes_one_backend(server):
    from glmbot.errors import UnknownDomainError

    with pytest.raises(UnknownDomainError, match="available models: base, auto, ads, support"):
        ChatGlmbot(base_url=server.url, domain="nope").invoke("你好")
    with pytest.raises(GenerationError, match="pass base_url for a glmbot server"):
        ChatGlmbot(base_url=server.url, config="glmbot.toml")
