"""glmbot over HTTP: the OpenAI-compatible API, one FastAPI app over the shared engine.

    from glmbot.http import ServerThread, create_app, run_server

One file per job, in the order a chat completion walks them:

    app.py             create_app: the routes, API-key guard, error handlers, lifespan
    auth.py            API keys and binding (refuse a public address without keys)
    routes.py          POST /v1/chat/completions: read the body, check it, hand it to the service
    schemas.py         the request schema (pydantic), checked before the engine sees it
    engine_request.py  a checked request -> the engine's GenerationRequest
    service.py         ChatService: submit to the engine, answer whole or streamed, log the turn
    streaming.py       SSE with send timeouts; racing an answer against the client's disconnect
    responses.py       engine results -> OpenAI response bodies and SSE events
    errors.py          APIError and OpenAI's error shape for every failure
    metrics.py         Prometheus text for /metrics
    server.py          uvicorn: run_server (foreground) and ServerThread (background)
"""

from __future__ import annotations

from glmbot.http.app import SEND_TIMEOUT_S, create_app
from glmbot.http.auth import API_KEYS_ENV, check_bind, is_loopback, resolve_api_keys
from glmbot.http.schemas import ChatCompletionRequest
from glmbot.http.server import ServerThread, check_port, run_server, server_config
from glmbot.http.streaming import EventStreamResponse

__all__ = ["API_KEYS_ENV", "SEND_TIMEOUT_S", "ChatCompletionRequest", "EventStreamResponse", "ServerThread",
           "check_bind", "check_port", "create_app", "is_loopback", "resolve_api_keys", "run_server", "server_config"]
