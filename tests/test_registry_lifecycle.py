"""Register -> promote -> rollback -> archive -> rm -> gc, with the database state checked after each step."""

from __future__ import annotations

import json
import os

import pytest
import torch
from registry_fixtures import (ARCH, FINGERPRINT, activation_log, adapter_states, adapters_dir, db_url, dir_entries,
                               prefix, register, registry, helper_process, support)
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from glmbot.config import Settings
from glmbot.errors import RegistryError, UnknownAdapterError, UnknownDomainError
from glmbot.model.prefix_io import EMBEDDING_KEY
from glmbot.registry import Registry
from glmbot.registry.migrations import MIGRATIONS, MIGRATIONS_TABLE
from glmbot.registry.store import host_tag
from glmbot.registry.tables import TABLES

__all__ = ["adapters_dir", "db_url", "registry", "helper_process", "support"]  # fixtures used by name


def test_register_writes_files_and_row(support: Registry, db_url: str):
    info = register(support, metrics={"rouge-l": 41.5}, hyperparams={"lr": 0.02}, sample_count=12,
                    dataset_sha256="a" * 64, routing_prompts=["where is my order", "refund please"])
    assert (info.domain, info.version, info.status, info.pre_seq_len) == ("support", 1, "candidate", 4)
    assert info.path == support.adapters_dir / "support" / "v1"
    names = {"adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json", "routing_prompts.json"}
    assert set(info.files) == names == {p.name for p in info.path.iterdir()}
    assert info.size_bytes == sum(p.stat().st_size for p in info.path.iterdir())
    cfg = json.loads((info.path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["domain"], cfg["version"], cfg["pre_seq_len"]) == ("P_TUNING_V2", "support", 1, 4)
    assert cfg["base_fingerprint"] == FINGERPRINT and cfg["architecture"] == ARCH
    assert json.loads((info.path / "metrics.json").read_text()) == {"rouge-l": 41.5}
    assert json.loads((info.path / "routing_prompts.json").read_text()) == ["where is my order", "refund please"]
    card = (info.path / "README.md").read_text()
    assert "| rouge-l | 41.5 |" in card and "| lr | 0.02 |" in card and "| prefix length P | 4 |" in card
    state, loaded = support.load_prefix_state("support@v1")
    assert list(state) == [EMBEDDING_KEY] and state[EMBEDDING_KEY].dtype == torch.float32
    assert torch.equal(state[EMBEDDING_KEY], prefix(seed=0)[EMBEDDING_KEY])
    assert loaded == support.resolve(info.id) == support.resolve(f"#{info.id}") == support.resolve("support@1")
    assert adapter_states(db_url) == [("support", 1, "candidate")]
    assert dir_entries(support.adapters_dir) == ["support", "support/v1", *sorted(f"support/v1/{n}" for n in names)]


def test_promote_rollback_archive_flow(support: Registry, db_url: str):
    for seed in range(3):
        register(support, seed=seed)
    assert adapter_states(db_url) == [("support", 1, "candidate"), ("support", 2, "candidate"),
                                      ("support", 3, "candidate")]
    with pytest.raises(UnknownAdapterError, match=r"no active adapter .*v1 \(candidate\).*promote"):
        support.resolve("support")

    assert support.promote("support@v1").status == "active"
    assert adapter_states(db_url) == [("support", 1, "active"), ("support", 2, "candidate"),
                                      ("support", 3, "candidate")]
    support.promote("support@v2")
    assert adapter_states(db_url) == [("support", 1, "archived"), ("support", 2, "active"), ("support", 3, "candidate")]
    support.promote("support@v3")
    assert adapter_states(db_url) == [("support", 1, "archived"), ("support", 2, "archived"), ("support", 3, "active")]
    assert support.resolve("support").version == 3
    assert activation_log(db_url) == [("promote", 1, None), ("promote", 2, 1), ("promote", 3, 2)]

    # rollback walks back through the history, one version per call
    assert support.rollback("support").version == 2
    assert adapter_states(db_url) == [("support", 1, "archived"), ("support", 2, "active"), ("support", 3, "archived")]
    assert support.rollback("support").version == 1
    assert adapter_states(db_url) == [("support", 1, "active"), ("support", 2, "archived"), ("support", 3, "archived")]
    assert activation_log(db_url)[3:] == [("rollback", 2, 1), ("rollback", 1, None)]
    with pytest.raises(RegistryError, match="no earlier active version"):
        support.rollback("support")
    assert adapter_states(db_url)[0] == ("support", 1, "active")  # the refused rollback changed nothing

    # promote again, then archive the active one: the domain serves nothing
    support.promote("support@v3")
    assert support.rollback("support").version == 1
    support.archive("support")
    assert adapter_states(db_url) == [("support", 1, "archived"), ("support", 2, "archived"),
                                      ("support", 3, "archived")]
    assert activation_log(db_url)[-1] == ("archive", 1, None)
    with pytest.raises(RegistryError, match="no active adapter to roll back from"):
        support.rollback("support")
    assert support.get_domain("support").active_version is None


def test_rollback_to_a_removed_version_is_refused(support: Registry, db_url: str):
    register(support, seed=1)
    register(support, seed=2)
    support.promote("support@v1")
    support.promote("support@v2")
    support.remove("support@v1")
    with pytest.raises(RegistryError, match=r"active before support@v2 \(id 1\) was removed; promote a version"):
        support.rollback("support")
    assert adapter_states(db_url) == [("support", 2, "active")]


def test_promote_active_is_a_no_op(support: Registry, db_url: str):
    register(support)
    first = support.promote("support@v1")
    again = support.promote("support")
    assert again.activated_at == first.activated_at
    assert activation_log(db_url) == [("promote", 1, None)]


def test_one_active_per_domain_enforced_by_the_database(support: Registry, db_url: str):
    register(support, seed=1)
    register(support, seed=2)
    support.promote("support@v1")
    engine = create_engine(db_url)
    try:
        with pytest.raises(Exception, match="(?i)unique"), engine.begin() as conn:
            conn.execute(text("UPDATE adapters SET status = 'active' WHERE version = 2"))
    finally:
        engine.dispose()
    assert adapter_states(db_url) == [("support", 1, "active"), ("support", 2, "candidate")]


def test_domains_are_independent(support: Registry, db_url: str):
    support.add_domain("hr")
    register(support, "support")
    register(support, "hr")
    register(support, "hr")
    support.promote("hr@v2")
    support.promote("support@v1")
    assert adapter_states(db_url) == [("hr", 1, "candidate"), ("hr", 2, "active"), ("support", 1, "active")]
    assert [a.ref for a in support.list_adapters(status="active")] == ["hr@v2", "support@v1"]
    assert [a.ref for a in support.list_adapters("hr")] == ["hr@v1", "hr@v2"]
    assert [(d.name, d.active_version, d.adapter_count) for d in support.list_domains()] == [("hr", 2, 2),
                                                                                             ("support", 1, 1)]
    dom = support.get_domain("support")
    assert (dom.description, dom.keywords, dom.patterns) == ("customer support", ("refund",), (r"order \d+",))


def test_remove_refuses_active_without_force_and_never_reuses_versions(support: Registry, db_url: str):
    first, second = register(support, seed=1), register(support, seed=2)
    support.promote("support@v2")
    with pytest.raises(RegistryError, match=r"support@v2 is the active adapter.*--force"):
        support.remove("support@v2")
    assert second.path.is_dir() and adapter_states(db_url) == [("support", 1, "candidate"), ("support", 2, "active")]

    removed = support.remove("support@v1")
    assert removed.id == first.id and not first.path.exists()
    assert adapter_states(db_url) == [("support", 2, "active")]
    support.remove("support", force=True)
    assert adapter_states(db_url) == [] and not second.path.exists()
    assert register(support).version == 3  # numbers of removed versions are not handed out again
    assert dir_entries(support.adapters_dir / "support") == sorted(
        ["v3", *(f"v3/{n}" for n in ("README.md", "adapter_config.json", "adapter_model.safetensors",
                                     "metrics.json"))])


def test_gc_removes_only_unreferenced_folders(support: Registry):
    kept = register(support)
    root = support.adapters_dir
    (root / "support" / "v7").mkdir()
    (root / "support" / "v7" / "adapter_model.safetensors").write_bytes(b"orphan")
    (root / "ghost" / "v1").mkdir(parents=True)
    old_foreign = root / ".tmp-4242-deadbeef-otherhost"  # another machine's, older than the grace period
    new_foreign = root / ".tmp-4243-deadbeef-otherhost"  # another machine's, maybe still writing
    dead_local = root / f".tmp-999999999-deadbeef-{host_tag()}"  # its writer's pid is gone
    live_local = root / f".tmp-{os.getpid()}-cafef00d-{host_tag()}"  # a registration in progress here
    for folder in (old_foreign, new_foreign, dead_local, live_local):
        folder.mkdir()
    os.utime(old_foreign, (0, 0))
    removed = support.gc()
    assert sorted(p.relative_to(root).as_posix() for p in removed) == sorted(
        [old_foreign.name, dead_local.name, "ghost/v1", "support/v7"])
    assert kept.path.is_dir() and live_local.is_dir() and new_foreign.is_dir() and (root / "ghost").is_dir()
    assert support.gc() == []
    assert support.verify()[0].ok


def test_refs(support: Registry):
    info = register(support)
    for ref in ("support@v1", "support@1", str(info.id), f"#{info.id}", info.id):
        assert support.resolve(ref).id == info.id
    with pytest.raises(UnknownAdapterError, match=r"no version v9; existing versions: v1 \(candidate\)"):
        support.resolve("support@v9")
    with pytest.raises(UnknownAdapterError, match="no adapter with id 999"):
        support.resolve(999)
    with pytest.raises(UnknownDomainError,
                       match=r"unknown domain 'sales'; known: support.*glmbot domains add sales"):
        support.resolve("sales@v1")
    with pytest.raises(UnknownAdapterError, match="bad version 'vx'"):
        support.resolve("support@vx")
    with pytest.raises(RegistryError, match="invalid domain name"):
        support.resolve("../etc@v1")


def test_evaluations_update_metrics(support: Registry):
    register(support, metrics={"rouge-l": 40.0, "bleu-4": 10.0})
    ev = support.add_evaluation("support@v1", {"rouge-l": 45.0}, "b" * 64, kind="test")
    assert (ev.kind, ev.metrics, ev.dataset_sha256) == ("test", {"rouge-l": 45.0}, "b" * 64)
    info = support.resolve("support@v1")
    assert info.metrics == {"rouge-l": 45.0, "bleu-4": 10.0}
    assert support.list_adapters()[0].metrics == info.metrics
    assert [e.metrics for e in support.evaluations("support@v1")] == [{"rouge-l": 45.0}]
    with pytest.raises(RegistryError, match="not a finite number"):
        support.add_evaluation("support@v1", {"rouge-l": float("nan")}, None)
    support.remove("support@v1")  # evaluations go with their adapter
    assert support.list_adapters() == []


def test_training_runs(support: Registry):
    run = support.start_run("support", hyperparams={"lr": 1e-3}, log_path="runs/1/train.log")
    assert (run.status, run.domain, run.finished_at) == ("running", "support", None)
    assert support.update_run(run.id, last_checkpoint="runs/1/checkpoint-100").last_checkpoint.endswith("-100")
    info = register(support)
    done = support.finish_run(run.id, adapter="support@v1")
    assert (done.status, done.adapter_id, done.last_checkpoint) == ("succeeded", info.id, "runs/1/checkpoint-100")
    assert done.finished_at >= done.started_at
    with pytest.raises(RegistryError, match="already finished"):
        support.finish_run(run.id, status="failed")
    failed = support.finish_run(support.start_run("support").id, status="failed", error="CUDA out of memory")
    assert [(r.status, r.error) for r in support.list_runs("support")] == [("failed", "CUDA out of memory"),
                                                                           ("succeeded", None)]
    with pytest.raises(RegistryError, match="finishes as one of"):
        support.finish_run(failed.id, status="running")


def test_migrations_are_recorded_once_and_match_the_tables(db_url: str, adapters_dir):
    Registry(db_url, adapters_dir).close()
    Registry(db_url, adapters_dir).close()  # reopening applies nothing twice
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            applied = [tuple(r) for r in conn.execute(text(f"SELECT id, name FROM {MIGRATIONS_TABLE} ORDER BY id"))]
            inspector = inspect(conn)
            for table in TABLES:  # the SQLModel classes and the migrated schema agree column by column
                name = table.__tablename__
                assert {c["name"] for c in inspector.get_columns(name)} == set(table.__table__.columns.keys()), name
            indexes = {ix["name"]: ix for ix in inspector.get_indexes("adapters")}
    finally:
        engine.dispose()
    assert applied == [(number, name) for number, name, _ in MIGRATIONS]
    assert indexes["ix_adapters_one_active"]["unique"]
    assert SQLModel.metadata.tables["adapters"] is TABLES[1].__table__


def test_from_settings_uses_the_configured_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("GLMBOT_DB_URL", raising=False)
    with Registry.from_settings(Settings(root=tmp_path)) as reg:
        assert reg.adapters_dir == tmp_path / "adapters"
        assert reg.db_url == f"sqlite:///{tmp_path / 'adapters' / 'registry.db'}"
        reg.add_domain("support")
    assert (tmp_path / "adapters" / "registry.db").is_file()
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("GLMBOT_DB_URL", f"sqlite:///{other}")
    with Registry.from_settings(Settings(root=tmp_path)) as reg:
        assert reg.list_domains() == []  # GLMBOT_DB_URL wins over the default
    assert other.is_file()
