"""The engine in a process of its own ([serving] engine_process): the same answers, streams,
errors, cancellation and stats as the engine in the server's process, the HTTP API over it, and
one clear error for every open request when the engine process dies."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from glmbot import load_base
from glmbot.config import settings_from_dict
from glmbot.errors import ModelLoadError, ServingUnavailableError, UnknownDomainError
from glmbot.http import ServerThread, create_app
from glmbot.plugins import get_manager
from glmbot.serving.factory import build_engine
from glmbot.serving.engine_process import ProcessEngine, wants_engine_process
from glmbot.serving.requests import GenerationRequest
from tests.test_server import KEYWORDS, MAX_LEN, SERVER, open_registry, register_random_domains

QUESTIONS = ["退货多久到账？", "帮我写一段文案", "你是谁", "谢谢", "退货要带发票吗？", "写一段裙子的文案"]


def process_settings(root):
    return settings_from_dict({"server": SERVER, "serving": {"engine_process": "always", "max_batch_size": 16},
                               "model": {"device": "cpu"},
                               "registry": {"db_url": f"sqlite:///{root / 'registry.db'}",
                                            "adapters_dir": str(root / "adapters")}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The same registry (two promoted domains) and settings served by an engine in this process
    (built as `glmbot serve` builds it) and by one in an engine process."""
    root = tmp_path_factory.mktemp("engine_process")
    settings = process_settings(root)
    model, tok = load_base("builtin:tiny", device="cpu")
    with open_registry(root) as registry:
        register_random_domains(registry, model)
        with build_engine(settings, model, tok, registry, get_manager(settings), max_len=MAX_LEN) as local, \
                ProcessEngine.from_settings(settings, max_len=MAX_LEN) as remote:
            yield local, remote, registry, settings


def ask(engine, text: str, **target) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], do_sample=False, max_new_tokens=24,
                             **target)


def test_answers_routes_and_streams_equal_the_engine_in_this_process(stack):
    local, remote, _, _ = stack
    for text in QUESTIONS:
        for target in ({}, {"domain": "support"}, {"domain": "base"}):
            want = local.generate(ask(local, text, **target))
            handle = remote.submit(ask(remote, text, **target))
            deltas = list(handle.stream())
            got = handle.result()
            assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
            assert got.route.domain == want.route.domain and got.adapter == want.adapter
            assert "".join(deltas) == got.text and (len(deltas) > 1 or len(got.token_ids) <= 2)


def test_many_streams_from_threads_share_batches_and_match_solo_answers(stack):
    local, remote, _, _ = stack
    texts = QUESTIONS * 4
    want = [local.generate(ask(local, t)).text for t in texts]
    before = remote.stats()
    with ThreadPoolExecutor(len(texts)) as pool:
        got = list(pool.map(lambda t: remote.generate(ask(remote, t)), texts))
    after = remote.stats()
    assert [r.text for r in got] == want
    assert after.peak_rows > 1  # batched together in the engine process
    assert after.finished["stop"] + after.finished.get("length", 0) - \
        before.finished["stop"] - before.finished.get("length", 0) == len(texts)


def test_errors_keep_their_type_and_message(stack):
    _, remote, _, _ = stack
    with pytest.raises(UnknownDomainError, match="unknown domain 'nope'"):
        remote.generate(ask(remote, "你好", domain="nope"))


def test_cancel_ends_the_request_in_the_engine_process_and_frees_its_row(stack):
    _, remote, _, _ = stack
    handle = remote.submit(GenerationRequest(query="写一段很长的文案", domain="ads", max_new_tokens=200,
                                             ignore_eos=True, do_sample=False))
    stream = handle.stream()
    next(stream)
    handle.cancel()
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled" and result.usage.completion_tokens < 200
    deadline = time.monotonic() + 20
    while remote.stats().active_rows:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)


def test_http_api_over_the_engine_process(stack):
    local, remote, registry, settings = stack
    app = create_app(remote, settings=settings, registry=registry)
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"base", "auto", *KEYWORDS}
        chunks = list(client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "退货多久到账？"}], stream=True, max_tokens=24,
            temperature=0))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == local.generate(ask(local, "退货多久到账？", domain="support")).text
        metrics = httpx.get(server.url + "/metrics").text
        assert "glmbot_engine_decode_tokens_total" in metrics
        assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_a_dead_engine_process_fails_open_requests_with_one_clear_error(tmp_path):
    settings = process_settings(tmp_path)
    with open_registry(tmp_path) as registry, ProcessEngine.from_settings(settings, max_len=MAX_LEN) as remote, \
            ServerThread(create_app(remote, settings=settings, registry=registry)) as server:
        handle = remote.submit(GenerationRequest(query="你好", max_new_tokens=230, ignore_eos=True, domain="base"))
        next(handle.stream())
        remote.process.kill()
        with pytest.raises(ServingUnavailableError, match="engine process stopped"):
            handle.result(timeout=30)
        with pytest.raises(ServingUnavailableError, match="restart the server"):
            remote.submit(GenerationRequest(query="你好"))
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "engine process stopped" in health.json()["error"]
        chat = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "base", "messages": [{"role": "user", "content": "你好"}]})
        assert chat.status_code == 503 and "restart the server" in chat.json()["error"]["message"]


def test_close_stops_the_engine_process_promptly(tmp_path):
    """close() ends the child at once (no wait for the terminate fallback); the child's exit code is 0."""
    remote = ProcessEngine.from_settings(process_settings(tmp_path), max_len=MAX_LEN)

    async def answer() -> str:
        return "".join([d async for d in remote.submit(GenerationRequest(query="你好", max_new_tokens=8)).astream()])
    assert asyncio.run(answer())
    started = time.monotonic()
    remote.close()
    assert time.monotonic() - started < 5 and remote.process.exitcode == 0


def refuse_to_build(base: str):
    raise ModelLoadError(f"no base at {base!r}: give a ChatGLM2-6B folder or 'builtin:tiny'")


def test_an_engine_that_cannot_be_built_raises_its_own_error_in_the_server_process():
    with pytest.raises(ModelLoadError, match="no base at '/nowhere'"):
        ProcessEngine(refuse_to_build, ("/nowhere",), tokenizer=None)


def test_auto_means_an_engine_process_on_cuda_only():
    def settings(choice, device):
        return settings_from_dict({"serving": {"engine_process": choice}, "model": {"device": device}})
    assert wants_engine_process(settings("auto", "cuda:0"))
    assert not wants_engine_process(settings("auto", "cpu"))
    assert wants_engine_process(settings("always", "cpu"))
    assert not wants_engine_process(settings("never", "cuda"))
