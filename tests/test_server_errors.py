"""Bad input, disconnecting and stalled clients, API keys and binding of the HTTP API: each case
gets its status and an OpenAI-shaped JSON error, and the engine frees the rows of clients that left."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from test_server import (  # noqa: F401
    MAX_LEN,
    engine,
    open_registry,
    registry,
    server,
    serving_engine,
    user,
    wait_for,
)

from glmbot.config import settings_from_dict
from glmbot.errors import ConfigError
from glmbot.http import (
    ServerThread,
    check_bind,
    check_port,
    create_app,
    is_loopback,
    resolve_api_keys,
)

CHAT = "/v1/chat/completions"
LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 0}  # ~1 s of decoding on the tiny base


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, body, **kwargs) -> httpx.Response:
    if isinstance(body, (dict, list)):
        kwargs["json"] = body
    else:
        kwargs["content"] = body
    return httpx.post(server.url + CHAT, timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and isinstance(error["message"], str)
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


def chat(**fields) -> dict:
    return {"model": "support", "messages": user("你好"), **fields}


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, needles", [
    (b"{not json", 400, ["not valid JSON"]),
    (b"[1, 2]", 400, ["must be a JSON object"]),
    ({"messages": user("hi")}, 400, ["model", "Field required"]),
    (chat(messages=[]), 400, ["invalid field messages", 'at least [{"role": "user", "content": "..."}]']),
    (chat(messages=[{"role": "tool", "content": "x"}]), 400, ["ChatGLM2 has no tool calls", "ChatGLM3 or GLM-4"]),
    (chat(messages=[{"role": "robot", "content": "x"}]), 400, ["messages.0.role"]),
    (chat(messages=[{"role": "assistant", "content": "x"}]), 400, ["last message must come from the user"]),
    (chat(max_tokens=0), 400, ["max_tokens = 0 must be a positive integer"]),
    (chat(max_tokens=-5), 400, ["max_tokens = -5"]),
    (chat(max_tokens=600), 400, ["above this server's limit of 512"]),
    (chat(max_tokens=MAX_LEN + 1), 400, [f"beyond the engine's context of {MAX_LEN}"]),
    (chat(max_completion_tokens=0), 400, ["max_completion_tokens = 0"]),
    (chat(max_tokens="10"), 400, ["max_tokens"]),
    (chat(n=2), 400, ["n = 2 is not supported"]),
    (chat(temperature=3), 400, ["temperature"]),
    (chat(presence_penalty=0.5), 400, ["presence_penalty", "repetition_penalty"]),
    (chat(logprobs=True), 400, ["logprobs"]),
    (chat(stream_options={"include_usage": True}), 400, ["only allowed with stream"]),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     ["ChatGLM2, which has no tool calls", "serve a ChatGLM3 or GLM-4 base"]),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={
        "type": "function", "function": {"name": "g"}}), 400, ["tool_choice names 'g'"]),
    (chat(functions=[]), 400, ["functions", "not an OpenAI chat field glmbot serves"]),
    (chat(stop=[""]), 400, ["stop"]),
    (chat(user="x" * 65), 400, ["not a usable conversation id"]),
    (chat(messages=user("很长的问题" * 200), max_tokens=16), 400, ["exceeds this engine's context limit"]),
    # the engine's max_new_tokens is the field the client sent: max_tokens (a newcomer read "max_new_tokens")
    (chat(messages=user("很长的问题" * 20), max_tokens=MAX_LEN - 20), 400, ["set max_tokens to at most"]),
])
def test_bad_requests_get_400_naming_the_problem(server, body, status, needles):
    assert_error(post(server, body), status, *needles)


@pytest.mark.parametrize("model", ["nope", "support@v9", "ads@vx"])
def test_unknown_models_get_404_listing_the_models(server, model):
    for stream in (False, True):
        error = assert_error(post(server, chat(model=model, stream=stream)), 404,
                             f"model {model!r} does not exist", "available models: base, auto, ads, support",
                             "e.g. ads@v1")  # one of the server's own active adapters, not a fixed support@v2
        assert error["code"] == "model_not_found"


def test_oversized_bodies_get_413_with_or_without_content_length(server):
    big = json.dumps(chat(messages=user("好" * 5000))).encode()  # over max_body_bytes = 4096
    assert_error(post(server, big), 413, "limit of 4096 bytes")

    def chunked():
        yield big[:2000]
        yield big[2000:]

    assert_error(post(server, chunked()), 413, "limit of 4096 bytes")


def test_unknown_routes_and_methods_answer_in_the_same_json_shape(server):
    assert_error(httpx.get(server.url + "/v1/nothing"), 404, "glmbot serves")
    assert_error(httpx.get(server.url + CHAT), 405)


def test_the_official_client_raises_its_typed_errors(client):
    with pytest.raises(openai.NotFoundError, match="available models"):
        client.chat.completions.create(model="nope", messages=user("你好"))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="support", messages=user("你好"), max_tokens=0)


# ---- clients that leave ------------------------------------------------------------------------------

def test_a_client_that_disconnects_mid_stream_frees_its_row(server, engine, registry):
    before = engine.stats().finished.get("cancelled", 0)
    conversation = f"gone-{time.time_ns()}"
    with httpx.Client(timeout=30) as http, \
            http.stream("POST", server.url + CHAT, json=chat(stream=True, user=conversation, **LONG)) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk: the request is generating
        next(lines)
    # leaving the block closed the connection long before the 200 tokens are done
    wait_for(lambda: engine.stats().finished.get("cancelled", 0) == before + 1)
    wait_for(lambda: engine.stats().active_rows == 0)
    assert httpx.get(server.url + "/health").status_code == 200
    assert 'status="499"' in httpx.get(server.url + "/metrics").text
    wait_for(lambda: len(registry.conversation_turns(conversation)) == 1)
    turn = registry.conversation_turns(conversation)[0]
    assert turn.finish_reason == "cancelled" and turn.completion_tokens < LONG["max_tokens"]


def test_a_client_that_gives_up_waiting_for_a_whole_answer_frees_its_row(server, engine):
    before = engine.stats().finished.get("cancelled", 0)
    with pytest.raises(httpx.ReadTimeout):  # then httpx closes the connection
        httpx.post(server.url + CHAT, json=chat(**LONG), timeout=httpx.Timeout(5, read=0.2))
    wait_for(lambda: engine.stats().finished.get("cancelled", 0) == before + 1)
    wait_for(lambda: engine.stats().active_rows == 0)


def test_a_client_that_stops_reading_is_cancelled_after_the_send_timeout(engine, registry):
    """ASGI-level: a `send` that never returns stands for a client whose socket buffers are full."""
    app = create_app(engine, settings=engine.settings, registry=registry, send_timeout_s=0.3)
    body = json.dumps(chat(stream=True, **LONG)).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
    sent = []

    async def exchange():
        incoming = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if incoming:
                return incoming.pop()
            await asyncio.Event().wait()  # connected, never says goodbye

        async def send(message):
            sent.append(message)
            if len(sent) >= 3:
                await asyncio.Event().wait()  # reads nothing more

        await asyncio.wait_for(app(scope, receive, send), 10)

    before = engine.stats().finished.get("cancelled", 0)
    started = time.monotonic()
    asyncio.run(exchange())
    assert sent[0]["status"] == 200 and time.monotonic() - started < 5
    wait_for(lambda: engine.stats().finished.get("cancelled", 0) == before + 1)
    wait_for(lambda: engine.stats().active_rows == 0)


def test_other_clients_are_served_while_one_disconnects(server, client, engine):
    with httpx.Client(timeout=30) as http, http.stream("POST", server.url + CHAT, json=chat(stream=True, **LONG)) as r:
        next(r.iter_lines())
        reply = client.chat.completions.create(model="ads", messages=user("你好"), temperature=0, max_tokens=8)
        assert reply.choices[0].message.content
    wait_for(lambda: engine.stats().active_rows == 0)


# ---- keys and binding --------------------------------------------------------------------------------

def test_api_keys_are_required_when_configured(engine, registry, monkeypatch):
    monkeypatch.setenv("GLMBOT_API_KEYS", "env-key")
    settings = settings_from_dict({"server": {"api_keys": ["toml-key"]}})
    app = create_app(engine, settings=settings, registry=registry, api_keys=["cli-key"])
    with ServerThread(app) as running:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic cli-key"},
                        {"Authorization": "cli-key"}):
            error = assert_error(post(running, chat(max_tokens=2), headers=headers), 401, "API key")
            assert error["code"] == "invalid_api_key"
        assert_error(httpx.get(running.url + "/v1/models"), 401)
        assert_error(httpx.get(running.url + "/metrics"), 401)
        assert httpx.get(running.url + "/health").status_code == 200  # for load balancers: no key
        metrics = httpx.get(running.url + "/metrics", headers={"Authorization": "Bearer cli-key"}).text
        assert 'glmbot_http_requests_total{model="-",status="401"} 6' in metrics
        for key in ("toml-key", "env-key", "cli-key"):
            reply = openai.OpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model="support", messages=user("你好"), max_tokens=2)
            assert reply.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_a_non_loopback_bind_without_keys_is_refused(engine, registry, monkeypatch):
    monkeypatch.delenv("GLMBOT_API_KEYS", raising=False)
    app = create_app(engine, settings=engine.settings, registry=registry)
    with pytest.raises(ConfigError, match="GLMBOT_API_KEYS"):
        ServerThread(app, host="0.0.0.0")
    check_bind("0.0.0.0", ["a-key"])  # with a key it may
    check_bind("127.0.0.1", [])
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com", "")] == [False] * 5
    monkeypatch.setenv("GLMBOT_API_KEYS", " a , b,")
    assert resolve_api_keys(settings_from_dict({"server": {"api_keys": ["c", "a"]}})) == ("c", "a", "b")


def test_serve_refuses_a_public_host_without_keys_before_loading_anything(tmp_path, capsys, monkeypatch):
    from cli_helpers import cli, make_project

    monkeypatch.delenv("GLMBOT_API_KEYS", raising=False)
    code, _, err = cli(make_project(tmp_path), "serve", "--host", "0.0.0.0", capsys=capsys)
    assert code == 1 and "refusing to serve on '0.0.0.0' without API keys" in err and "--api-key" in err


def test_serve_refuses_a_port_in_use_before_loading_anything(tmp_path, capsys):
    import socket

    from cli_helpers import cli, make_project

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli(make_project(tmp_path), "serve", "--port", str(port), capsys=capsys)
        with pytest.raises(ConfigError, match=f"port {port} on localhost is already in use"):
            check_port("localhost", port)  # every address of the name is checked, the IPv4 one among them
    check_port("127.0.0.1", port)  # free again once closed
    assert code == 1 and f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "glmbot serve ·" not in out  # refused before the model was loaded and the banner printed


def test_bad_server_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="port"):
        settings_from_dict({"server": {"port": 70000}})
    with pytest.raises(ConfigError, match="unknown key server.'max_body'"):
        settings_from_dict({"server": {"max_body": 1}})
    with pytest.raises(ConfigError, match="empty key"):
        settings_from_dict({"server": {"api_keys": [" "]}})
