"""The registry's SQLModel tables.

These classes are how the code reads and writes rows. The schema itself is created and changed
only by the numbered migrations in `migrations.py` (a test checks the two agree), so a column
added here must come with a new migration.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from glmbot.registry.states import (  # noqa: F401 - the tables' vocabulary, re-exported
    ACTIVE, ARCHIVED, CANDIDATE, DEACTIVATE, PROMOTE, ROLLBACK, RUN_STATUSES, SOURCES, STATUSES)

ONE_ACTIVE_WHERE = text("status = 'active'")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _when() -> DateTime:
    return DateTime(timezone=True)


class DomainRow(SQLModel, table=True):
    """A business domain: one prefix family with its routing hints."""

    __tablename__ = "domains"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    description: str = Field(default="")
    keywords: list = Field(default_factory=list, sa_type=JSON)
    patterns: list = Field(default_factory=list, sa_type=JSON)
    # Versions are never reused, even after `rm`: this counter only grows (under the row lock).
    next_version: int = Field(default=1)
    created_at: datetime = Field(default_factory=utcnow, sa_type=_when())


class AdapterRow(SQLModel, table=True):
    """One registered adapter version and the hashes of its files."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("domain_id", "version", name="uq_adapters_domain_version"),
        # At most one active adapter per domain, also against writers that skip our API. Migration 1
        # creates it only where partial indexes exist (SQLite, PostgreSQL); elsewhere it is not made.
        Index("ix_adapters_one_active", "domain_id", unique=True,
              sqlite_where=ONE_ACTIVE_WHERE, postgresql_where=ONE_ACTIVE_WHERE),
        Index("ix_adapters_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    domain_id: int = Field(foreign_key="domains.id")
    version: int
    status: str = Field(default=CANDIDATE, max_length=16)
    base_model: str
    base_fingerprint: str = Field(max_length=80)
    architecture: dict = Field(default_factory=dict, sa_type=JSON)
    pre_seq_len: int
    prefix_projection: bool = Field(default=False)
    dtype: str = Field(default="float32", max_length=16)
    path: str  # relative to the adapters folder, posix separators: "support/v3"
    files: dict = Field(default_factory=dict, sa_type=JSON)  # {file name: sha256 hex}
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=_when())
    activated_at: datetime | None = Field(default=None, sa_type=_when())
    source: str = Field(default="trained", max_length=16)
    provenance: dict = Field(default_factory=dict, sa_type=JSON)
    hyperparams: dict = Field(default_factory=dict, sa_type=JSON)
    dataset_sha256: str | None = Field(default=None, max_length=64)
    sample_count: int | None = None
    metrics: dict = Field(default_factory=dict, sa_type=JSON)
    glmbot_version: str = Field(default="", max_length=32)
    # What is wrong with the stored files ("adapter_model.safetensors: sha256 mismatch"), set when a
    # load, promote or verify finds it, cleared when verify finds the files intact; None = intact.
    damage: str | None = None
    damaged_at: datetime | None = Field(default=None, sa_type=_when())


class ActivationRow(SQLModel, table=True):
    """One change of a domain's active adapter; rollback reads it backwards.

    Adapter ids are plain integers (no foreign key) so the log survives `rm` of an adapter.
    """

    __tablename__ = "activations"

    id: int | None = Field(default=None, primary_key=True)
    domain_id: int = Field(foreign_key="domains.id", index=True)
    action: str = Field(max_length=16)
    adapter_id: int
    previous_adapter_id: int | None = None
    at: datetime = Field(default_factory=utcnow, sa_type=_when())


class EvaluationRow(SQLModel, table=True):
    """Metrics of one adapter on one evaluation set."""

    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(foreign_key="adapters.id", index=True)
    kind: str = Field(default="dev", max_length=32)
    metrics: dict = Field(default_factory=dict, sa_type=JSON)  # {metric name: value}
    dataset_sha256: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=_when())


class TrainingRunRow(SQLModel, table=True):
    """A training run of a domain, from start to its registered adapter (or failure)."""

    __tablename__ = "training_runs"

    id: int | None = Field(default=None, primary_key=True)
    domain_id: int = Field(foreign_key="domains.id", index=True)
    status: str = Field(default="running", max_length=16)
    started_at: datetime = Field(default_factory=utcnow, sa_type=_when())
    finished_at: datetime | None = Field(default=None, sa_type=_when())
    last_checkpoint: str | None = None
    log_path: str | None = None
    hyperparams: dict = Field(default_factory=dict, sa_type=JSON)
    adapter_id: int | None = None  # the adapter it registered; plain id, survives `rm`
    error: str | None = None


class HubPushRow(SQLModel, table=True):
    """One upload of an adapter to a Hugging Face Hub repo: where it went and which commit it made.

    The adapter id is a plain integer (no foreign key), so the record survives `rm` of the adapter.
    """

    __tablename__ = "hub_pushes"

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(index=True)
    repo: str = Field(max_length=200)  # "org/name"
    revision: str = Field(max_length=255)  # the branch committed to
    commit_sha: str = Field(max_length=64)  # the commit the push made (or found, when nothing changed)
    tag: str | None = Field(default=None, max_length=255)
    endpoint: str = ""  # the Hub's URL, e.g. https://huggingface.co
    pushed_at: datetime = Field(default_factory=utcnow, sa_type=_when())


class ConversationRow(SQLModel, table=True):
    """A chat conversation (CLI, LangChain or HTTP); its turns are in `turns`."""

    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=20)  # cli | langchain | http
    title: str = Field(max_length=200)  # the first question, shortened
    started_at: datetime = Field(default_factory=utcnow, sa_type=_when())


class TurnRow(SQLModel, table=True):
    """One question and answer with the route that served it."""

    __tablename__ = "turns"

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(index=True, max_length=64)
    query: str
    answer: str
    domain: str | None = Field(default=None, max_length=64)
    adapter: str | None = Field(default=None, max_length=80)  # 'support@v3'; None = plain base
    route_reason: str | None = Field(default=None, max_length=20)
    route_score: float | None = None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = Field(max_length=20)
    latency_s: float
    first_token_s: float | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=_when())


TABLES = (DomainRow, AdapterRow, ActivationRow, EvaluationRow, TrainingRunRow, HubPushRow, ConversationRow, TurnRow)
