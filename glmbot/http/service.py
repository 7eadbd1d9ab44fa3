"""The service behind glmbot's HTTP API: answers from the shared engine, whole or streamed.

`ChatService.answer` submits a checked request to the engine and waits on its handle with
`aresult()`/`astream()`, racing the client's disconnect: a client that goes away cancels its
request in the engine. A stream is primed (its first text, or its error, awaited) before the
response starts, so an unknown model or a too-long prompt is still a 404/400, not a broken stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from glmbot.config import Settings
from glmbot.errors import (
    DatabaseError,
    GenerationError,
    GlmbotError,
    ServingUnavailableError,
    UnknownAdapterError,
    UnknownDomainError,
)
from glmbot.http.errors import APIError, error_body
from glmbot.http.metrics import CONTENT_TYPE, ServerMetrics
from glmbot.http.responses import (
    CompletionIds,
    chunk_body,
    completion_body,
    content_events,
    glmbot_extension,
    openai_finish_reason,
    sse,
    tool_calls_body,
    usage_chunk,
)
from glmbot.http.schemas import AUTO, CONVERSATION_HEADER, ChatCompletionRequest
from glmbot.http.streaming import (
    CLIENT_GONE,
    ClientGone,
    EventStreamResponse,
    next_delta,
    until_disconnected,
)
from glmbot.serving.prefix_cache import StaticPrefixSource
from glmbot.serving.prompts import engine_family
from glmbot.serving.requests import GenerationRequest, RequestHandle
from glmbot.serving.router import BASE

log = logging.getLogger(__name__)
LOG_WAIT_S = 60.0  # how long the logging thread waits for a cancelled request to wind down


@dataclass
class _Exchange:
    """One request in flight: what its accounting needs once it ends, however it ends."""

    handle: RequestHandle
    request: GenerationRequest
    model: str
    started: float
    status: int | None = None  # set when the answer was delivered (or failed); None = client gone
    closed: bool = False


class ChatService:
    def __init__(self, engine: Any, settings: Settings, registry: Any, turn_logger: Any, metrics: ServerMetrics,
                 pool: ThreadPoolExecutor, send_timeout_s: float):
        self.engine, self.settings, self.registry, self.turn_logger = engine, settings, registry, turn_logger
        self.metrics, self.pool, self.send_timeout_s = metrics, pool, send_timeout_s
        self.started_at = int(time.time())

    # ---- small endpoints ------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        try:
            s = self.engine.stats()
        except ServingUnavailableError as exc:  # the engine process is gone: not healthy
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        family = engine_family(self.engine)
        return JSONResponse({"status": "ok", "base_family": family.name, "active_rows": s.active_rows, "queued": s.queued,
                             "max_batch_size": self.engine.max_batch_size, "max_len": self.engine.max_len,
                             "finished": s.finished})

    async def metrics_text(self) -> PlainTextResponse:
        try:
            stats = self.engine.stats()
        except ServingUnavailableError as exc:
            raise APIError(503, str(exc), "server_error", "unavailable") from None
        return PlainTextResponse(self.metrics.render(stats), media_type=CONTENT_TYPE)

    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": await asyncio.to_thread(self.model_cards)})

    async def model(self, model_id: str) -> JSONResponse:
        cards = await asyncio.to_thread(self.model_cards)
        for card in cards:
            if card["id"] == model_id:
                return JSONResponse(card)
        raise _no_such_model(model_id, cards)

    def model_cards(self) -> list[dict[str, Any]]:
        """base, auto, then one card per servable domain (blocking: reads the registry)."""
        def card(name: str, kind: str, created: int | None = None, **extra: Any) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": created or self.started_at, "owned_by": "glmbot",
                    "glmbot": {"kind": kind, "base_family": family.name, "base_family_name": family.display,
                               "system_role": family.native_system, "tools": family.native_tools, **extra}}

        family = engine_family(self.engine)

        cards = [card(BASE, "base", description="the plain base model, no prefix"),
                 card(AUTO, "routed", description="the engine's router picks the domain of each message")]
        if self.registry is not None:
            for info in sorted(self.registry.list_adapters(status="active"), key=lambda i: i.domain):
                when = info.activated_at or info.created_at
                cards.append(card(info.domain, "domain", int(when.timestamp()) if when else None, domain=info.domain,
                                  adapter=info.ref, version=info.version))
        else:
            for name in self._memory_domains():
                cards.append(card(name, "domain", domain=name, adapter=name, version=None))
        return cards

    def _memory_domains(self) -> list[str]:
        router, cache = getattr(self.engine, "router", None), getattr(self.engine, "prefix_cache", None)
        if cache is not None and isinstance(cache.source, StaticPrefixSource):
            return sorted(cache.source.prefixes)
        return sorted(router.domains) if router is not None else []

    # ---- chat completions -----------------------------------------------------------------------

    async def answer(self, request: Request, chat: ChatCompletionRequest, gen: GenerationRequest,
                     ids: CompletionIds, started: float) -> Response:
        try:
            handle = self.engine.submit(gen)
        except (GenerationError, ServingUnavailableError) as exc:  # the engine is closing, or its process is gone
            raise APIError(503, str(exc), "server_error", "unavailable") from None
        exchange = _Exchange(handle, gen, chat.model, started)
        try:
            if chat.stream:
                return await self._stream(request, chat, exchange, ids)
            return await self._complete(request, exchange, ids)
        except ClientGone:
            self.close(exchange)
            return Response(status_code=CLIENT_GONE)
        except GlmbotError as exc:
            self.close(exchange, counted=False)
            raise await self._api_error(exc, chat.model) from None
        except BaseException:
            self.close(exchange, counted=False)
            raise

    async def _complete(self, request: Request, exchange: _Exchange, ids: CompletionIds) -> JSONResponse:
        result = await until_disconnected(exchange.handle.aresult(), request)
        conversation = exchange.request.conversation_id
        if result.finish_reason == "cancelled":  # nothing but Engine.close() cancels it while the client waits
            raise APIError(503, "the request was cancelled: the server is shutting down; send it again",
                           "server_error", "unavailable")
        exchange.status = 200
        self.close(exchange)
        return JSONResponse(completion_body(ids, result, conversation), headers={CONVERSATION_HEADER: conversation})

    async def _stream(self, request: Request, chat: ChatCompletionRequest, exchange: _Exchange,
                      ids: CompletionIds) -> Response:
        deltas = exchange.handle.astream()
        more, first = await until_disconnected(next_delta(deltas), request)  # errors before any text: 4xx/5xx
        events = self._events(chat, exchange, ids, deltas, first if more else None)
        return EventStreamResponse(events, lambda: self.close(exchange), self.send_timeout_s,
                                   headers={CONVERSATION_HEADER: exchange.request.conversation_id})

    async def _events(self, chat: ChatCompletionRequest, exchange: _Exchange, ids: CompletionIds,
                      deltas: AsyncIterator[str], first: str | None) -> AsyncIterator[str]:
        usage = bool(chat.stream_options and chat.stream_options.include_usage)
        content = content_events(ids, with_usage=usage)  # the per-token event, pre-rendered
        try:
            yield sse(chunk_body(ids, {"role": "assistant", "content": ""}, with_usage=usage))
            if first is not None:
                yield content(first)
                async for delta in deltas:
                    yield content(delta)
            result = exchange.handle.result()
            if result.tool_calls:  # held back by the engine until parsed: content (if any), then the calls
                if first is None and result.text:
                    yield sse(chunk_body(ids, {"content": result.text}, with_usage=usage))
                yield sse(chunk_body(ids, {"tool_calls": tool_calls_body(result.tool_calls, stream=True)},
                                     with_usage=usage))
        except GlmbotError as exc:  # failed mid-stream: the status line is sent, so say it in the stream
            error = await self._api_error(exc, chat.model)
            exchange.status = error.status
            yield sse(error.body())
            yield sse("[DONE]")
            return
        finally:
            await deltas.aclose()  # no await inside astream's cleanup: safe while being cancelled
        if result.finish_reason == "cancelled":
            exchange.status = 503
            yield sse(error_body("the request was cancelled: the server is shutting down", "server_error"))
            yield sse("[DONE]")
            return
        last = chunk_body(ids, {}, openai_finish_reason(result), with_usage=usage)
        last["glmbot"] = glmbot_extension(result, exchange.request.conversation_id)
        yield sse(last)
        if usage:
            yield sse(usage_chunk(ids, result))
        exchange.status = 200
        yield sse("[DONE]")

    def close(self, exchange: _Exchange, counted: bool = True) -> None:
        """Once per request, however it ended: cancel it if unfinished, count it, log the turn."""
        if exchange.closed:
            return
        exchange.closed = True
        handle = exchange.handle
        if not handle.done:
            handle.cancel()  # the engine frees the row at its next step
        if not counted:  # an error response: chat_completions counts it
            return
        # A client may leave before its model name was checked: such names never become labels.
        model = exchange.model if exchange.request.route is not None else "-"
        self.metrics.ended(model, exchange.status or CLIENT_GONE, time.perf_counter() - exchange.started)
        try:
            self.pool.submit(self._account, exchange, model)
        except RuntimeError:  # the app is shutting down: the pool takes no more turns
            log.warning("conversation log: a turn ended after shutdown began and is not logged")

    def _account(self, exchange: _Exchange, model: str) -> None:
        """On the logging thread: wait for the engine's result, count its tokens, log the turn."""
        try:
            result = exchange.handle.result(timeout=LOG_WAIT_S)
        except Exception:  # noqa: BLE001 - a failed request has no turn to log (the engine logged its error)
            return
        self.metrics.tokens(model, result)
        if self.turn_logger is not None:
            self.turn_logger.record_turn(exchange.request, result)

    async def _api_error(self, exc: GlmbotError, model: str) -> APIError:
        """Engine errors -> statuses: unknown model 404, bad request 400, registry or replica down 503, else 500."""
        if isinstance(exc, (UnknownDomainError, UnknownAdapterError)):
            try:
                cards = await asyncio.to_thread(self.model_cards)
            except GlmbotError:
                cards = []
            return _no_such_model(model, cards, str(exc))
        if isinstance(exc, GenerationError):
            # The engine's name for the API's max_tokens: a client must read the field it sent.
            message = str(exc)
            return APIError(400, message.replace("max_new_tokens", "max_tokens"),
                            param="max_tokens" if "max_new_tokens" in message else None)
        if isinstance(exc, ServingUnavailableError):  # a Ray Serve replica died under the request
            return APIError(503, str(exc), "server_error", "unavailable")
        if isinstance(exc, DatabaseError):
            return APIError(503, f"the adapter registry is unavailable: {exc}", "server_error", "unavailable")
        if isinstance(exc, GlmbotError):
            return APIError(500, str(exc), "server_error")
        log.error("unexpected engine error", exc_info=exc)
        return APIError(500, "internal server error; the server log has the details", "server_error")


def _no_such_model(model: str, cards: list[dict[str, Any]], why: str = "") -> APIError:
    names = ", ".join(c["id"] for c in cards) or "none"
    # The version example is one of this server's own active adapters (a newcomer's project has no 'support',
    # and its only version was v1 where the example said v2).
    example = next((c["glmbot"]["adapter"] for c in cards
                    if c["glmbot"].get("kind") == "domain" and c["glmbot"].get("version")), "support@v1")
    return APIError(404, f"model {model!r} does not exist{f' ({why})' if why else ''}; available models: {names} "
                         f"(a domain may also be asked for by version, e.g. {example})",
                    code="model_not_found", param="model")
