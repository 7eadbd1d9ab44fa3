"""Several processes, crashes and unusable databases."""

from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest
from registry_fixtures import (adapter_states, adapters_dir, crash_while_registering, db_rows, db_url, dir_entries,
                               helper_process, register, register_many, registry, support, wait_for_file)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from glmbot.errors import DatabaseError
from glmbot.registry import Registry

__all__ = ["adapters_dir", "db_url", "helper_process", "registry", "support"]
FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.json"]


def test_two_processes_get_distinct_versions(support: Registry, db_url: str, helper_process, tmp_path: Path):
    """This process and the helper process register versions of one domain at the same moment."""
    per_process, ready, go = 4, str(tmp_path / "ready"), str(tmp_path / "go")
    other = helper_process.apply_async(register_many,
                                       (db_url, str(support.adapters_dir), "support", per_process, 2, go, ready))
    wait_for_file(ready, timeout=120)
    Path(go).touch()
    mine = register_many(db_url, str(support.adapters_dir), "support", per_process, 1, go)
    theirs = other.get(timeout=120)
    assert sorted(mine + theirs) == list(range(1, 2 * per_process + 1))  # distinct, no gaps
    assert adapter_states(db_url) == [("support", v, "candidate") for v in range(1, 2 * per_process + 1)]
    assert all(result.ok for result in support.verify())
    for info in support.list_adapters():
        assert sorted(p.name for p in info.path.iterdir()) == FILES == sorted(info.files)
    assert db_rows(db_url)["domains"][0][5] == 2 * per_process + 1  # next_version
    assert [p for p in support.adapters_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_processes_killed_before_commit_leave_nothing_registered(support: Registry, db_url: str, helper_process):
    first = register(support)
    before = db_rows(db_url)
    crashes = helper_process.apply(crash_while_registering, (db_url, str(support.adapters_dir)))
    assert {when: sig for when, (_, sig) in crashes.items()} == {"in-temp": 9, "after-move": 9}

    assert db_rows(db_url) == before  # no row, no version number taken
    assert [info.ref for info in support.list_adapters()] == ["support@v1"]
    tmp = [p for p in support.adapters_dir.iterdir() if p.name.startswith(".tmp-")]
    assert [p.name.split("-")[1] for p in tmp] == [str(crashes["in-temp"][0])]  # named after the dead writer
    assert sorted(p.name for p in tmp[0].iterdir()) == FILES  # complete, but never moved in
    orphan = support.adapters_dir / "support" / "v2"
    assert sorted(p.name for p in orphan.iterdir()) == FILES

    assert support.gc() == [tmp[0], orphan]
    assert dir_entries(support.adapters_dir) == ["support", "support/v1", *(f"support/v1/{n}" for n in FILES)]
    assert first.path.is_dir() and support.verify()[0].ok
    again = register(support, seed=10)
    assert again.version == 2 and support.verify("support@v2")[0].ok


def test_registration_replaces_a_crash_leftover_at_its_version(support: Registry):
    leftover = support.adapters_dir / "support" / "v1"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half-written by a crashed process")
    info = register(support)
    assert info.path == leftover and support.verify("support@v1")[0].ok
    assert sorted(p.name for p in leftover.iterdir()) == FILES


@contextmanager
def writer_holding_the_lock(db_url: str):
    """Another connection in the middle of a long write (it holds what registrations need)."""
    if db_url.startswith("sqlite"):
        holder = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE domains IN EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def test_switching_a_sqlite_registry_to_wal_waits_out_a_locked_moment():
    """SQLite refuses the journal-mode pragma at once ("locked", no busy wait) while another
    process is in the middle of opening or closing the file; the ranks of a torchrun opening one
    registry hit that (one of two ranks failed in 3 of 4 runs of the gloo training test). The
    switch retries until the busy timeout, and other errors pass through at once."""
    from glmbot.registry.database import _use_wal

    class Cursor:
        def __init__(self, refusals: int, mode: str = "delete", error: str = "database is locked"):
            self.refusals, self.mode, self.error, self.calls = refusals, mode, error, []

        def execute(self, sql):
            self.calls.append(sql)
            if self.refusals:
                self.refusals -= 1
                raise sqlite3.OperationalError(self.error)
            if sql == "PRAGMA journal_mode=WAL":
                self.mode = "wal"
            return self

        def fetchone(self):
            return (self.mode,)

    cursor = Cursor(refusals=3)
    _use_wal(cursor, busy_timeout_s=5)
    assert cursor.mode == "wal" and cursor.calls[-1] == "PRAGMA journal_mode=WAL"
    already = Cursor(refusals=0, mode="wal")
    _use_wal(already, busy_timeout_s=5)
    assert already.calls == ["PRAGMA journal_mode"]  # set once per file, then only checked
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _use_wal(Cursor(refusals=10**6), busy_timeout_s=0.1)
    other = Cursor(refusals=1, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _use_wal(other, busy_timeout_s=5)
    assert len(other.calls) == 1


def test_locked_database_gives_one_clear_error(db_url: str, adapters_dir: Path):
    reg = Registry(db_url, adapters_dir, busy_timeout_s=0.2)
    reg.add_domain("support")
    with writer_holding_the_lock(db_url), pytest.raises(DatabaseError) as caught:
        register(reg)
    assert re.search(r"registry database (sqlite|postgresql)\S* is locked by another process \(waited 0.2 s\); retry",
                     str(caught.value)), str(caught.value)
    assert [p.name for p in adapters_dir.iterdir() if p.name.startswith(".tmp-")] == []  # its temp folder is gone
    assert register(reg).version == 1  # the lock is gone: it works
    reg.close()


def test_unreachable_server_names_the_url_without_password(tmp_path: Path):
    with pytest.raises(DatabaseError) as caught:
        Registry("postgresql+psycopg://glmbot:s3cret@127.0.0.1:1/registry", tmp_path)
    message = str(caught.value)
    assert "cannot reach registry database postgresql+psycopg://glmbot:***@127.0.0.1:1/registry" in message
    assert "s3cret" not in message and "GLMBOT_DB_URL" in message


@pytest.mark.parametrize("url, pattern", [("nosuchdb://x/y", "no driver|not a valid"),
                                          ("not a url", "not a valid SQLAlchemy URL")])
def test_bad_url(tmp_path: Path, url: str, pattern: str):
    with pytest.raises(DatabaseError, match=pattern):
        Registry(url, tmp_path)
