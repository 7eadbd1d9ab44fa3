"""Shared fixtures of the registry tests: every test runs on SQLite and on a real PostgreSQL.

PostgreSQL is conftest's `postgres_url`: GLMBOT_TEST_PG_URL, else a private server started for
the session (tests/postgres_server.py). Each test gets a fresh schema (search_path in the URL, so
subprocesses see it too) that is dropped afterwards.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from sqlalchemy import create_engine, text

from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.fingerprint import architecture
from glmbot.model.prefix_io import EMBEDDING_KEY, PREFIX_KEY
from glmbot.registry import Registry, store

BACKENDS = ("sqlite", "postgresql")
FINGERPRINT = "sha256:0123456789abcdef"


def tiny_config(**overrides) -> ChatGLMConfig:
    kwargs = dict(num_layers=2, padded_vocab_size=128, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
                  num_attention_heads=4, multi_query_group_num=2)
    return ChatGLMConfig(**{**kwargs, **overrides})


CONFIG = tiny_config()
ARCH = architecture(CONFIG)
WIDTH = CONFIG.prefix_width  # 2 layers x 2 (k, v) x 2 groups x 16 = 128


def prefix(p: int = 4, seed: int = 0, width: int = WIDTH, projection: bool = False,
           hidden: int = 64) -> dict[str, torch.Tensor]:
    """A random prefix state dict under the official keys."""
    g = torch.Generator().manual_seed(seed)
    state = {EMBEDDING_KEY: torch.randn(p, width, generator=g)}
    if projection:
        state[PREFIX_KEY + "trans.0.weight"] = torch.randn(hidden, width, generator=g)
        state[PREFIX_KEY + "trans.0.bias"] = torch.randn(hidden, generator=g)
        state[PREFIX_KEY + "trans.2.weight"] = torch.randn(width, hidden, generator=g)
        state[PREFIX_KEY + "trans.2.bias"] = torch.randn(width, generator=g)
    return state


def register(registry: Registry, domain: str = "support", seed: int = 0, **kwargs):
    """Register a tiny prefix with sensible defaults."""
    kwargs.setdefault("base_model", "builtin:tiny")
    kwargs.setdefault("base_fingerprint", FINGERPRINT)
    kwargs.setdefault("architecture", ARCH)
    state = kwargs.pop("state") if "state" in kwargs else prefix(seed=seed)
    return registry.register_adapter(domain, state, **kwargs)


def official_checkpoint(root, state, pre_seq_len: int, step: int = 3000, projection: bool = False):
    """What the official ptuning/main.py saves: checkpoint-N/{pytorch_model.bin, config.json}."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm", "num_layers": 28,
                                                    "pre_seq_len": pre_seq_len, "prefix_projection": projection}))
    return folder


# ---- PostgreSQL -----------------------------------------------------------------------------------

def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema(postgres_url: str, prefix: str = "glmbot_test") -> Iterator[str]:
    """A database URL on a new, empty PostgreSQL schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_search_path(postgres_url, schema)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path: Path):
    """A fresh, empty registry database URL: SQLite file or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def adapters_dir(tmp_path: Path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def registry(db_url: str, adapters_dir: Path):
    reg = Registry(db_url, adapters_dir, busy_timeout_s=10)
    yield reg
    reg.close()


@pytest.fixture
def support(registry: Registry) -> Registry:
    """The registry with the domain 'support' created."""
    registry.add_domain("support", "customer support", keywords=["refund"], patterns=[r"order \d+"])
    return registry


# ---- observing what the registry did --------------------------------------------------------------

def db_rows(db_url: str) -> dict[str, list[tuple]]:
    """Every row of every registry table, as plain tuples (for 'nothing changed' assertions)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
                    for table in ("domains", "adapters", "activations", "evaluations", "training_runs")}
    finally:
        engine.dispose()


def adapter_states(db_url: str) -> list[tuple[str, int, str]]:
    """(domain, version, status) of every adapter row, read straight from the database."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT d.name, a.version, a.status FROM adapters a "
                                     "JOIN domains d ON d.id = a.domain_id ORDER BY d.name, a.version"))
            return [tuple(r) for r in rows]
    finally:
        engine.dispose()


def activation_log(db_url: str) -> list[tuple[str, int, int | None]]:
    """(action, version made active/deactivated, version active before or None), oldest first."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT e.action, a.version, p.version FROM activations e "
                "LEFT JOIN adapters a ON a.id = e.adapter_id LEFT JOIN adapters p ON p.id = e.previous_adapter_id "
                "ORDER BY e.id"))
            return [tuple(r) for r in rows]
    finally:
        engine.dispose()


def file_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` except the SQLite database files."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("registry.db")}


def dir_entries(root: Path) -> list[str]:
    """Every file and folder under `root` (relative), SQLite files excluded."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("registry.db"))


# ---- a helper process for the multi-process tests ------------------------------------------------
#
# Starting a Python that imports glmbot costs seconds on 2 cores, so the multi-process tests share
# one spawned helper process, started with the first registry test: its imports overlap the other
# tests instead of adding to the suite's time.

@pytest.fixture(scope="session", autouse=True)
def helper_process():
    """A one-process spawn Pool (its own interpreter); tasks run there one at a time.

    Autouse in every registry test module (they import it), so it starts with the first of them.
    """
    pool = multiprocessing.get_context("spawn").Pool(1)
    pool.apply_async(os.getpid)  # start importing now
    yield pool
    pool.terminate()
    pool.join()


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.001)


def register_many(db_url: str, adapters_dir: str, domain: str, count: int, seed: int, go_file: str,
                  ready_file: str | None = None) -> list[int]:
    """Open the registry, say so in `ready_file`, wait for `go_file`, then register `count` versions."""
    reg = Registry(db_url, adapters_dir, busy_timeout_s=60)
    if ready_file:
        Path(ready_file).touch()
    wait_for_file(go_file)
    versions = [register(reg, domain, seed=seed * 100 + i).version for i in range(count)]
    reg.close()
    return versions


def crash_while_registering(db_url: str, adapters_dir: str) -> dict[str, tuple[int, int]]:
    """Fork one registering process per crash point; each SIGKILLs itself before its commit.

    "in-temp": the files are complete in .tmp-*, not moved in; "after-move": they are in
    <domain>/v<N>, the row is not committed. Returns {crash point: (pid, signal that ended it)}.
    """
    real_publish = store.publish
    ended = {}
    for when in ("in-temp", "after-move"):
        pid = os.fork()
        if pid == 0:  # the registering process
            def publish_and_die(staged, root, relative, when=when):  # noqa: ANN001
                if when == "after-move":
                    real_publish(staged, root, relative)
                os.kill(os.getpid(), signal.SIGKILL)

            store.publish = publish_and_die
            register(Registry(db_url, adapters_dir), "support", seed=9)
            os._exit(3)  # not reached
        _, status = os.waitpid(pid, 0)
        ended[when] = (pid, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1)
    return ended
