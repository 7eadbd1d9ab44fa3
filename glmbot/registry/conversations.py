"""The conversation log: every chat turn (CLI, LangChain, HTTP) with the route that served it.

A mixin of `Registry`, like records.py: it uses the host's `_db`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import IO

from sqlmodel import func, select

from glmbot.errors import RegistryError
from glmbot.registry.info import aware
from glmbot.registry.tables import ConversationRow, TurnRow

SOURCES = ("cli", "langchain", "http", "web")
TITLE_CHARS = 60


@dataclass(frozen=True)
class TurnInfo:
    id: int
    conversation_id: str
    query: str
    answer: str
    domain: str | None
    adapter: str | None
    route_reason: str | None
    route_score: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_s: float
    first_token_s: float | None
    error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, r: TurnRow) -> TurnInfo:
        return cls(r.id, r.conversation_id, r.query, r.answer, r.domain, r.adapter, r.route_reason, r.route_score,
                   r.prompt_tokens, r.completion_tokens, r.finish_reason, r.latency_s, r.first_token_s, r.error,
                   aware(r.created_at))


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    source: str
    title: str
    started_at: datetime
    turns: int
    last_at: datetime | None


class ConversationsMixin:
    """log_turn / list_conversations / conversation_turns / export_conversations."""

    def log_turn(self, conversation_id: str, *, source: str, query: str, answer: str, domain: str | None = None,
                 adapter: str | None = None, route_reason: str | None = None, route_score: float | None = None,
                 prompt_tokens: int = 0, completion_tokens: int = 0, finish_reason: str = "stop",
                 latency_s: float = 0.0, first_token_s: float | None = None, error: str | None = None) -> TurnInfo:
        """Append a turn to `conversation_id` (created on its first turn), in one transaction."""
        if source not in SOURCES:
            raise RegistryError(f"conversation source {source!r} is not one of {', '.join(SOURCES)}")
        if not conversation_id or len(conversation_id) > 64:
            raise RegistryError(f"conversation id {conversation_id!r} must be 1-64 characters")
        with self._db.write() as s:
            if s.get(ConversationRow, conversation_id) is None:
                s.add(ConversationRow(id=conversation_id, source=source, title=query.strip()[:TITLE_CHARS]))
            row = TurnRow(conversation_id=conversation_id, query=query, answer=answer, domain=domain, adapter=adapter,
                          route_reason=route_reason, route_score=route_score, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, finish_reason=finish_reason, latency_s=latency_s,
                          first_token_s=first_token_s, error=error)
            s.add(row)
            s.flush()
            return TurnInfo.from_row(row)

    def list_conversations(self, limit: int = 50) -> list[ConversationInfo]:
        """The newest conversations first, with their turn counts."""
        with self._db.read() as s:
            counts = (select(TurnRow.conversation_id, func.count(TurnRow.id), func.max(TurnRow.created_at))
                      .group_by(TurnRow.conversation_id).subquery())
            stmt = (select(ConversationRow, counts.c[1], counts.c[2])
                    .join(counts, counts.c.conversation_id == ConversationRow.id, isouter=True)
                    .order_by(ConversationRow.started_at.desc(), ConversationRow.id).limit(limit))
            return [ConversationInfo(c.id, c.source, c.title, aware(c.started_at), n or 0, aware(last) if last else None)
                    for c, n, last in s.exec(stmt)]

    def conversation_turns(self, conversation_id: str) -> list[TurnInfo]:
        """The turns of a conversation, oldest first; `conversation_id` may be the start of one id
        (`glmbot logs show 3f2a9c0e`, as `logs list` shows ids)."""
        with self._db.read() as s:
            conversation_id = _conversation_id(s, conversation_id)
            rows = s.exec(select(TurnRow).where(TurnRow.conversation_id == conversation_id).order_by(TurnRow.id))
            return [TurnInfo.from_row(r) for r in rows]

    def export_conversations(self, out: IO[str], conversation_id: str | None = None) -> int:
        """Write turns as JSON lines (one per turn, oldest first); returns how many."""
        with self._db.read() as s:
            stmt = select(TurnRow).order_by(TurnRow.id)
            if conversation_id is not None:
                stmt = stmt.where(TurnRow.conversation_id == _conversation_id(s, conversation_id))
            n = 0
            for row in s.exec(stmt):
                record = asdict(TurnInfo.from_row(row))
                record["created_at"] = record["created_at"].isoformat()
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
            return n


def _conversation_id(session, given: str) -> str:  # noqa: ANN001 - a sqlmodel Session
    """The conversation id `given` names: itself, or the one id it starts (a newcomer typed the first
    6 characters of a 32-character id and got "no conversation")."""
    if session.get(ConversationRow, given) is not None:
        return given
    found = list(session.exec(select(ConversationRow.id).where(
        ConversationRow.id.startswith(given, autoescape=True)).limit(3))) if given else []
    if len(found) == 1:
        return found[0]
    if found:
        raise RegistryError(f"{given!r} starts several conversations ({', '.join(found[:2])}, ...); give more of its id")
    raise RegistryError(f"no conversation {given!r}; list them with: glmbot logs list")
