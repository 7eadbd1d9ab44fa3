"""glmbot's OpenAI-compatible HTTP API over one shared engine: the FastAPI app and its routes.

    app = create_app(engine, settings=settings, registry=registry)
    run_server(app, "127.0.0.1", 8000)          # server.py; or: with ServerThread(app) as server: ...

Every request goes into the same engine, so concurrent clients of every domain share its
batches. Handlers only await the engine (`RequestHandle.astream()`), never block the event loop.
A chat completion reads top to bottom through routes.py -> schemas.py -> engine_request.py ->
service.py -> responses.py (streaming.py for SSE and disconnects). Endpoints, the `glmbot`
extension field and the error statuses are described in docs/HTTP_API.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse

from glmbot.config import Settings
from glmbot.http.auth import key_guard, resolve_api_keys
from glmbot.http.errors import add_error_handlers
from glmbot.http.metrics import ServerMetrics
from glmbot.http.routes import chat_endpoint
from glmbot.http.service import ChatService
from glmbot.serving.turn_log import TurnLogger

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0  # a stream whose client reads nothing for this long is cancelled


def create_app(engine: Any, *, settings: Settings, registry: Any = None, api_keys: Sequence[str] = (),
               turn_logger: Any = None, send_timeout_s: float = SEND_TIMEOUT_S, web_ui: bool = False) -> FastAPI:
    """The ASGI app over `engine`. api_keys add to [server] api_keys and $GLMBOT_API_KEYS; when any
    key is set, /v1/* and /metrics want one. turn_logger: None = log each turn to `registry` when
    [server] log_conversations is on (any object with record_turn(request, result) otherwise).
    web_ui: also serve the chat page and adapter dashboard under /ui (web/, Gradio; `glmbot serve` does)."""
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
    add_error_handlers(app)
    guard = [Depends(key_guard(keys, metrics))]
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/metrics", service.metrics_text, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/models", service.models, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/models/{model_id:path}", service.model, methods=["GET"], dependencies=guard)
    app.add_api_route("/v1/chat/completions", chat_endpoint(service), methods=["POST"], dependencies=guard)
    if web_ui:
        ui_path = app.state.web_ui_path = _mount_web_ui(app, engine, settings, registry, keys)
        # A browser pointed at the server's address (what serve's banner names first) finds the chat page.
        app.add_api_route("/", lambda: RedirectResponse(f"{ui_path}/"), methods=["GET"], include_in_schema=False)
    return app


def _mount_web_ui(app: FastAPI, engine: Any, settings: Settings, registry: Any, keys: Sequence[str]) -> str:
    """Mount the pages; returns their path."""
    from glmbot.http.web import (  # gradio takes seconds to import
        UI_PATH,
        WebBackend,
        mount_web_ui,
    )

    logger = None
    if registry is not None and settings.server.log_conversations:
        logger = TurnLogger(registry, "web", on_disabled=log.warning)
    mount_web_ui(app, WebBackend(engine, registry, settings, logger), keys)
    return UI_PATH
