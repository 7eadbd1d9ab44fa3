"""The chat completion route: read the body, check it, turn it into an engine request, answer it.

    POST /v1/chat/completions
      read_json            413 past [server] max_body_bytes, 400 when not JSON
      parse_chat_request   schemas.py: 400 naming the first bad field
      generation_request   engine_request.py: target, token budget, conversation id
      ChatService.answer   service.py: the engine's answer, whole or streamed (404/400 from the engine)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from glmbot.errors import GlmbotError
from glmbot.http.background import background_task
from glmbot.http.engine_request import TokenLimits, conversation_id, generation_request
from glmbot.http.errors import APIError
from glmbot.http.responses import CompletionIds
from glmbot.http.schemas import CONVERSATION_HEADER, parse_chat_request
from glmbot.http.service import ChatService
from glmbot.serving.prompts import build_prompt, engine_family, tools_refused


def chat_endpoint(service: ChatService) -> Callable:
    server = service.settings.server
    limits = TokenLimits(min(service.settings.generation.max_new_tokens, server.max_tokens_limit),
                         server.max_tokens_limit, service.engine.max_len)
    family = engine_family(service.engine)

    async def chat_completions(request: Request) -> Response:
        """POST /v1/chat/completions: checked here, answered by the service (404/400 from the engine)."""
        started = time.perf_counter()
        service.metrics.started()
        try:
            chat = parse_chat_request(await read_json(request, server.max_body_bytes))
            conversation = conversation_id(request.headers.get(CONVERSATION_HEADER), chat.user)
            gen = generation_request(chat, conversation, limits)
            if chat.tools and not family.native_tools:
                raise APIError(400, str(tools_refused(family)), param="tools")
            try:  # the messages are checked now: a 400 before engine work
                _, _, prompt = await asyncio.to_thread(build_prompt, gen, service.engine.tokenizer, family)
            except GlmbotError as exc:
                raise APIError(400, str(exc), param="messages") from None
            if chat.max_tokens is None and chat.max_completion_tokens is None or background_task(gen.messages):
                # as much as the context leaves
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
