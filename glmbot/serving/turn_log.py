"""Writes each answered turn to the registry's conversation log, and never stops a chat doing so.

A database that cannot be written turns logging off with one warning (through `on_disabled`)
instead of failing the conversation.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

from glmbot.errors import GlmbotError
from glmbot.serving.requests import GenerationRequest, GenerationResult, chat_turns

log = logging.getLogger(__name__)


def new_conversation_id() -> str:
    return uuid.uuid4().hex


class TurnLogger:
    """record_turn(request, result, source) -> registry.log_turn, or a no-op once the DB failed."""

    def __init__(self, registry: Any, source: str, on_disabled: Callable[[str], None] | None = None):
        self.registry = registry
        self.source = source
        self.on_disabled = on_disabled
        self.enabled = registry is not None

    def record_turn(self, request: GenerationRequest, result: GenerationResult, source: str | None = None) -> None:
        if not self.enabled:
            return
        route = result.route
        try:
            query = chat_turns(request)[0] if request.prompt_ids is None else ""
            self.registry.log_turn(
                request.conversation_id or new_conversation_id(), source=source or self.source, query=query,
                answer=result.text, domain=route.domain if route else None, adapter=result.adapter,
                route_reason=route.reason if route else None, route_score=route.score if route else None,
                prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                finish_reason=result.finish_reason, latency_s=result.timings.total_s,
                first_token_s=result.timings.first_token_s)
        except (GlmbotError, OSError) as exc:
            self.enabled = False
            message = f"conversation logging is off: {exc}"
            log.warning(message)
            if self.on_disabled is not None:
                self.on_disabled(message)
