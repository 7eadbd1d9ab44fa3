"""The registry's database connection: SQLite (default) or any SQLAlchemy URL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`, which takes the database's write lock up front: two processes that allocate a
version number never read the same counter. On PostgreSQL the same code locks the domain row
(`SELECT ... FOR UPDATE`). Driver errors come out as one `DatabaseError` naming the URL (without
its password) and the fix.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlmodel import Session

from glmbot.errors import DatabaseError
from glmbot.registry import migrations

WRITE_OPTION = "glmbot_write"


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def describe_db_error(url: str, exc: Exception, busy_timeout_s: float) -> DatabaseError:
    """One clear DatabaseError for a driver failure: what happened to which URL, and the fix."""
    shown = safe_url(url)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = detail.lower()
    if "locked" in low or "busy" in low or "lock timeout" in low:
        return DatabaseError(
            f"registry database {shown} is locked by another process (waited {busy_timeout_s:g} s); retry when "
            "it finishes, or find the holder with `fuser` on the .db file")
    if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
        return DatabaseError(
            f"registry database {shown} cannot be opened for writing ({detail}); check the folder exists and is "
            "writable, or set [registry] db_url / GLMBOT_DB_URL")
    if isinstance(exc, sa_exc.NoSuchModuleError | ModuleNotFoundError):
        return DatabaseError(f"no driver for registry database {shown} ({detail}); for PostgreSQL install "
                             "`pip install 'glmbot[postgres]'` and use a postgresql+psycopg:// URL")
    if isinstance(exc, sa_exc.ArgumentError):
        return DatabaseError(f"registry database URL {shown!r} is not a valid SQLAlchemy URL ({detail}); "
                             "fix [registry] db_url or GLMBOT_DB_URL")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return DatabaseError(f"cannot reach registry database {shown} ({detail}); start the server or fix "
                             "[registry] db_url / GLMBOT_DB_URL")
    return DatabaseError(f"registry database {shown} failed: {detail}")


DRIVER_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError)


def _use_wal(cursor, busy_timeout_s: float) -> None:  # noqa: ANN001 - a DBAPI cursor
    """Put the database in WAL mode (persistent: set once per file, then only checked).

    Asking for the journal mode needs a moment with no other connection switching it or closing
    the file (the last one out checkpoints), and SQLite answers "locked" at once there instead of
    waiting: processes opening the registry together (the ranks of one torchrun) retry within
    the busy timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_engine(url: str, busy_timeout_s: float) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        folder = Path(path).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the folder {folder} of registry database {safe_url(url)} ({exc}); "
                                "make it writable or set [registry] db_url / GLMBOT_DB_URL") from None
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI objects
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the pysqlite driver would defer it).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _use_wal(cursor, busy_timeout_s)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Database:
    """Engine + sessions for one registry database; migrates it on open."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0):
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        try:
            if make_url(url).get_backend_name() == "sqlite":
                self.engine = _sqlite_engine(url, busy_timeout_s)
            else:
                self.engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
                if self.engine.dialect.name == "postgresql":
                    _set_lock_timeout(self.engine, busy_timeout_s)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ModuleNotFoundError) as exc:
            raise describe_db_error(url, exc, busy_timeout_s) from None
        self._write_engine = self.engine.execution_options(**{WRITE_OPTION: True})
        self.dialect = self.engine.dialect.name
        self.migrate()

    def migrate(self) -> list[int]:
        """Apply pending migrations (a read first, so an up-to-date database takes no write lock)."""
        with self._errors():
            with self.engine.connect() as conn:
                if not migrations.pending(conn):
                    return []
            with self._write_engine.begin() as conn:
                return migrations.migrate(conn)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except DRIVER_ERRORS as exc:
            raise describe_db_error(self.url, exc, self.busy_timeout_s) from None

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads (no lock on SQLite); rolled back at the end."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed at the end, rolled back on any exception.

        On SQLite it starts with BEGIN IMMEDIATE (the database write lock, waiting up to the
        busy timeout); callers lock rows with `with_for_update()` for other backends.
        """
        with self._errors(), Session(self._write_engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def lock_everything(self, session: Session) -> None:
        """Block every registry writer until this transaction ends (used by gc)."""
        if self.dialect == "postgresql":
            # EXCLUSIVE conflicts with the ROW SHARE lock of SELECT ... FOR UPDATE on a domain.
            session.exec(text("LOCK TABLE domains IN EXCLUSIVE MODE"))
        elif self.dialect != "sqlite":  # SQLite: BEGIN IMMEDIATE already holds the only write lock
            session.exec(text("SELECT id FROM domains FOR UPDATE"))

    def close(self) -> None:
        self.engine.dispose()


def _set_lock_timeout(engine: Engine, seconds: float) -> None:
    """Wait at most `seconds` for a row or table lock (PostgreSQL waits forever by default)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI objects
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(seconds * 1000)}")
        dbapi_conn.commit()


def _connect_args(url: str) -> dict:
    """Fail fast when a server is down instead of hanging on the OS's TCP timeout."""
    return {"connect_timeout": 10} if make_url(url).get_backend_name() == "postgresql" else {}
