"""Numbered schema migrations, recorded in the `_glmbot_migrations` table (as simonw/llm does).

Each migration is a function of an open connection, applied once, in order, inside one
transaction that holds a write lock (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL),
so several processes opening a fresh database at once apply it exactly once.

Migration 1 spells out the first schema itself (it does not call `create_all` on the current
table classes): a later migration that adds a column then works both on old databases and on new
ones. To change the schema, append a function with the next number and change `tables.py` to match.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Connection, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Table, UniqueConstraint, inspect, text)

MIGRATIONS_TABLE = "_glmbot_migrations"
# Any constant works; it only has to be the same in every process (PostgreSQL advisory lock key).
PG_LOCK_KEY = 0x67_6C_6D_62_6F_74  # "glmbot"

# Backends whose partial (filtered) unique indexes SQLAlchemy can create; elsewhere the
# one-active-adapter rule is enforced by the promote transaction alone.
PARTIAL_INDEX_DIALECTS = ("sqlite", "postgresql")

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(number: int, name: str) -> Callable[[Migration], Migration]:
    """Register `fn` as migration `number`; numbers must follow each other."""

    def register(fn: Migration) -> Migration:
        expected = len(MIGRATIONS) + 1
        if number != expected:
            raise ValueError(f"migration {name!r} has number {number}, expected {expected}")
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


def _when(name: str, nullable: bool = False) -> Column:
    return Column(name, DateTime(timezone=True), nullable=nullable)


@migration(1, "create registry tables")
def m001_create_tables(conn: Connection) -> None:
    md = MetaData()
    active = text("status = 'active'")
    Table("domains", md,
          Column("id", Integer, primary_key=True),
          Column("name", String(64), nullable=False, unique=True),
          Column("description", String, nullable=False),
          Column("keywords", JSON), Column("patterns", JSON),
          Column("next_version", Integer, nullable=False),
          _when("created_at"))
    Table("adapters", md,
          Column("id", Integer, primary_key=True),
          Column("domain_id", Integer, ForeignKey("domains.id"), nullable=False),
          Column("version", Integer, nullable=False),
          Column("status", String(16), nullable=False),
          Column("base_model", String, nullable=False),
          Column("base_fingerprint", String(80), nullable=False),
          Column("architecture", JSON),
          Column("pre_seq_len", Integer, nullable=False),
          Column("prefix_projection", Boolean, nullable=False),
          Column("dtype", String(16), nullable=False),
          Column("path", String, nullable=False),
          Column("files", JSON),
          Column("size_bytes", BigInteger, nullable=False),
          _when("created_at"), _when("activated_at", nullable=True),
          Column("source", String(16), nullable=False),
          Column("provenance", JSON), Column("hyperparams", JSON),
          Column("dataset_sha256", String(64)), Column("sample_count", Integer),
          Column("metrics", JSON),
          Column("glmbot_version", String(32), nullable=False),
          UniqueConstraint("domain_id", "version", name="uq_adapters_domain_version"),
          Index("ix_adapters_status", "status"))
    Table("activations", md,
          Column("id", Integer, primary_key=True),
          Column("domain_id", Integer, ForeignKey("domains.id"), nullable=False, index=True),
          Column("action", String(16), nullable=False),
          Column("adapter_id", Integer, nullable=False),
          Column("previous_adapter_id", Integer),
          _when("at"))
    Table("evaluations", md,
          Column("id", Integer, primary_key=True),
          Column("adapter_id", Integer, ForeignKey("adapters.id"), nullable=False, index=True),
          Column("kind", String(32), nullable=False),
          Column("metrics", JSON),
          Column("dataset_sha256", String(64)),
          _when("created_at"))
    Table("training_runs", md,
          Column("id", Integer, primary_key=True),
          Column("domain_id", Integer, ForeignKey("domains.id"), nullable=False, index=True),
          Column("status", String(16), nullable=False),
          _when("started_at"), _when("finished_at", nullable=True),
          Column("last_checkpoint", String), Column("log_path", String),
          Column("hyperparams", JSON),
          Column("adapter_id", Integer), Column("error", String))
    md.create_all(conn)
    if conn.dialect.name in PARTIAL_INDEX_DIALECTS:
        # At most one active adapter per domain, enforced by the database as well as by our transactions.
        Index("ix_adapters_one_active", md.tables["adapters"].c.domain_id, unique=True,
              sqlite_where=active, postgresql_where=active).create(conn)


@migration(2, "record hub pushes")
def m002_hub_pushes(conn: Connection) -> None:
    # adapter_id is a plain integer (no foreign key), like activations: what was published stays
    # on record after `rm` of the local adapter.
    md = MetaData()
    Table("hub_pushes", md,
          Column("id", Integer, primary_key=True),
          Column("adapter_id", Integer, nullable=False, index=True),
          Column("repo", String(200), nullable=False),
          Column("revision", String(255), nullable=False),
          Column("commit_sha", String(64), nullable=False),
          Column("tag", String(255)),
          Column("endpoint", String, nullable=False),
          _when("pushed_at"))
    md.create_all(conn)


@migration(3, "conversation log")
def m003_conversation_log(conn: Connection) -> None:
    md = MetaData()
    Table("conversations", md,
          Column("id", String(64), primary_key=True),
          Column("source", String(20), nullable=False),
          Column("title", String(200), nullable=False),
          _when("started_at"))
    Table("turns", md,
          Column("id", Integer, primary_key=True),
          Column("conversation_id", String(64), nullable=False, index=True),
          Column("query", String, nullable=False),
          Column("answer", String, nullable=False),
          Column("domain", String(64)),
          Column("adapter", String(80)),
          Column("route_reason", String(20)),
          Column("route_score", Float),
          Column("prompt_tokens", Integer, nullable=False),
          Column("completion_tokens", Integer, nullable=False),
          Column("finish_reason", String(20), nullable=False),
          Column("latency_s", Float, nullable=False),
          Column("first_token_s", Float),
          Column("error", String),
          _when("created_at"))
    md.create_all(conn)


@migration(4, "mark damaged adapters")
def m004_adapter_damage(conn: Connection) -> None:
    # Set when a version's files fail their sha256 check or cannot be read (a load, promote or verify
    # found it), cleared when verify finds them intact again. Routed requests skip a marked version.
    _add_column(conn, "adapters", Column("damage", String))
    _add_column(conn, "adapters", _when("damaged_at", nullable=True))


def _add_column(conn: Connection, table: str, column: Column) -> None:
    """ALTER TABLE ... ADD COLUMN for a nullable column, its type spelled in the connection's dialect."""
    ddl = column.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column.name} {ddl}"))


def _lock(conn: Connection) -> None:
    """Serialise migrations across processes (SQLite: the caller's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})


def _applied(conn: Connection) -> set[int]:
    if not inspect(conn).has_table(MIGRATIONS_TABLE):
        return set()
    return {row[0] for row in conn.execute(text(f"SELECT id FROM {MIGRATIONS_TABLE}"))}


def pending(conn: Connection) -> list[int]:
    """Numbers of the migrations not applied yet to this database."""
    done = _applied(conn)
    return [number for number, _, _ in MIGRATIONS if number not in done]


def migrate(conn: Connection) -> list[int]:
    """Apply the pending migrations on `conn` (inside its write transaction); returns their numbers."""
    _lock(conn)
    Table(MIGRATIONS_TABLE, MetaData(),
          Column("id", Integer, primary_key=True),
          Column("name", String, nullable=False),
          _when("applied_at")).create(conn, checkfirst=True)
    done = _applied(conn)
    applied = []
    for number, name, fn in MIGRATIONS:
        if number in done:
            continue
        fn(conn)
        conn.execute(text(f"INSERT INTO {MIGRATIONS_TABLE} (id, name, applied_at) VALUES (:id, :name, :at)"),
                     {"id": number, "name": name, "at": datetime.now(timezone.utc)})
        applied.append(number)
    return applied
