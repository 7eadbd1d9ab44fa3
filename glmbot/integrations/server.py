"""glmbot's OpenAI-compatible HTTP API over one shared engine (FastAPI app, served by uvicorn).

    app = create_app(engine, settings=settings, registry=registry)
    run_server(app, "127.0.0.1", 8000)          # or: with ServerThread(app) as server: server.url

Every request goes into the same engine, so concurrent clients of every domain share its
batches. Handlers only await the engine (`RequestHandle.astream()`), never block the event loop.
A client that disconnects, or stops reading its stream for `send_timeout_s`, has its request
cancelled in the engine, which frees its batch row at the next step. Endpoints, the `glmbot`
extension field and the error statuses are described in docs/HTTP_API.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from glmbot.config import Settings
from glmbot.errors import ConfigError, GlmbotError
from glmbot.integrations.server_metrics import ServerMetrics
from glmbot.integrations.server_models import (
    CONVERSATION_HEADER,
    APIError,
    ChatCompletionRequest,
    CompletionIds,
    TokenLimits,
    conversation_id,
    error_body,
    generation_request,
    parse_chat_request,
)
from glmbot.integrations.server_service import ChatService, EventStreamResponse
from glmbot.serving.requests import chat_turns
from glmbot.serving.turn_log import TurnLogger

log = logging.getLogger(__name__)

API_KEYS_ENV = "GLMBOT_API_KEYS"
SEND_TIMEOUT_S = 30.0  # a stream whose client reads nothing for this long is cancelled


# ---- keys and binding -------------------------------------------------------------------------------

def resolve_api_keys(settings: Settings, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """[server] api_keys + $GLMBOT_API_KEYS (comma-separated) + `extra` (e.g. --api-key), deduplicated."""
    env = [k for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    keys = [k.strip() for k in (*settings.server.api_keys, *env, *extra)]
    if any(not k for k in keys):
        raise ConfigError("an API key is empty: give non-empty keys (server.api_keys in glmbot.toml, GLMBOT_API_KEYS, --api-key)")
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def check_bind(host: str, api_keys: Sequence[str]) -> None:
    """Refuse to listen beyond this machine without API keys."""
    if not is_loopback(host) and not api_keys:
        raise ConfigError(
            f"refusing to serve on {host!r} without API keys: anyone who can reach it could use the model. "
            f"Set {API_KEYS_ENV}=KEY (comma-separated for several), or server.api_keys in glmbot.toml, or pass "
            "--api-key KEY; or bind 127.0.0.1 (--host 127.0.0.1)")


def _key_guard(keys: Sequence[str], metrics: ServerMetrics) -> Callable:
    """A dependency that wants `Authorization: Bearer KEY`; compares SHA-256 digests in constant time."""
    digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    async def require_key(request: Request) -> None:
        if not digests:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for digest in digests:  # no early exit: the time does not tell which key came close
            matched |= hmac.compare_digest(digest, given)
        if scheme.lower() != "bearer" or not matched:
            metrics.refused(401)
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with a key "
                                "this server was given", code="invalid_api_key")

    return require_key


# ---- the app ----------------------------------------------------------------------------------------

def create_app(engine: Any, *, settings: Settings, registry: Any = None, api_keys: Sequence[str] = (),
               turn_logger: Any = None, send_timeout_s: float = SEND_TIMEOUT_S) -> FastAPI:
    """The ASGI app over `engine`. api_keys add to [server] api_keys and $GLMBOT_API_KEYS; when any
    key is set, /v1/* and /metrics want one. turn_logger: None = log each turn to `registry` when
    [server] log_conversations is on (any object with record_turn(request, result) otherwise)."""
    keys = resolve_api_keys(settings, api_keys)
    if turn_logger is None and registry is not None and settings.server.log_conversations:
        turn_logger = TurnLogger(registry, "http", on_disabled=log.warning)
    pool = ThreadPoolExecutor(1, thread_name_prefix="glmbot-http-log")  # turn logging off the event loop
    metrics = ServerMetrics()
    service = ChatService(engine, settings, registry, turn_logger, metrics, pool, send_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(pool.shutdown, wait=True)  # the last turns reach the log

    app = FastAPI(title="glmbot", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_keys, app.state.service = keys, service
    _add_error_handlers(app)
    guard = [Depends(_key_guard(keys, metrics))]
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/metrics", service.metrics_text, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/models", service.models, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/models/{model_id:path}", service.model, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/chat/completions", chat_endpoint(service), methods=["POST"], dependencies=guard)
    return app


def chat_endpoint(service: ChatService) -> Callable:
    server = service.settings.server
    limits = TokenLimits(min(service.settings.generation.max_new_tokens, server.max_tokens_limit),
                         server.max_tokens_limit, service.engine.max_len)

    async def chat_completions(request: Request) -> Response:
        """POST /v1/chat/completions: checked here, answered by the service (404/400 from the engine)."""
        started = time.perf_counter()
        service.metrics.started()
        try:
            chat = parse_chat_request(await read_json(request, server.max_body_bytes))
            conversation = conversation_id(request.headers.get(CONVERSATION_HEADER), chat.user)
            gen = generation_request(chat, conversation, limits)
            try:
                query, history = chat_turns(gen)  # the message order is checked now: a 400 before engine work
            except GlmbotError as exc:
                raise APIError(400, str(exc), param="messages") from None
            if chat.max_tokens is None and chat.max_completion_tokens is None:  # as much as the context leaves
                prompt = await asyncio.to_thread(service.engine.tokenizer.build_chat_input, query, history)
                gen.max_new_tokens = max(1, min(gen.max_new_tokens, service.engine.max_len - len(prompt)))
            return await service.answer(request, chat, gen, CompletionIds.new(chat.model), started)
        except APIError as exc:
            service.metrics.ended("-", exc.status, time.perf_counter() - started)
            raise
        except BaseException:
            service.metrics.ended("-", 500, time.perf_counter() - started)
            raise

    return chat_completions


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: 413 past `limit` bytes (read no further), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(413, f"request body of {declared} bytes is over this server's limit of {limit} bytes "
                            "([server] max_body_bytes)", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"request body is over this server's limit of {limit} bytes ([server] max_body_bytes)",
                           code="request_too_large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is OpenAI's JSON shape; no traceback ever reaches a client."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = (f"no route {request.method} {request.url.path}; glmbot serves GET /v1/models, "
                   "POST /v1/chat/completions, GET /health, GET /metrics") if exc.status_code in (404, 405) \
            else str(exc.detail)
        return JSONResponse(error_body(message, "invalid_request_error", "not_found" if exc.status_code == 404
                                       else None), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[0]['msg']}", "invalid_request_error"),
                            status_code=400)

    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering a request", exc_info=exc)
        return JSONResponse(error_body("internal server error; the server log has the details", "server_error"),
                            status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


# ---- running it -------------------------------------------------------------------------------------

def server_config(app: FastAPI, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for `app`; refuses a non-loopback host when the app has no API keys."""
    check_bind(host, app.state.api_keys)
    kwargs.setdefault("log_level", "info")
    kwargs.setdefault("timeout_graceful_shutdown", 10)
    return uvicorn.Config(app, host=host, port=port, **kwargs)


def run_server(app: FastAPI, host: str, port: int, **kwargs: Any) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    uvicorn.Server(server_config(app, host, port, **kwargs)).run()


class ServerThread:
    """uvicorn on a background thread (tests, benchmarks, notebooks); port 0 = a free port.

        with ServerThread(app) as server:
            openai.OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        kwargs.setdefault("log_level", "warning")
        self.server = uvicorn.Server(server_config(app, host, port, **kwargs))
        self.host = host
        self._thread = threading.Thread(target=self.server.run, name="glmbot-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host} (port taken, or see the log)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["API_KEYS_ENV", "ChatCompletionRequest", "EventStreamResponse", "ServerThread", "check_bind",
           "create_app", "is_loopback", "resolve_api_keys", "run_server"]
