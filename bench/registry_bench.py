"""Registry benchmark: register, list, resolve and load 1,000 tiny adapters, against the file-only way.

The baseline is what a user does without a registry: the official P-Tuning v2 recipe saves
`checkpoint-N/{pytorch_model.bin, config.json}` (torch.save, no fsync, no hashes) and finding
adapters means scanning folders and reading each config.json. The registry pays for fsync'ed
atomic writes, sha256 of every file and one transaction per adapter; it gains indexed queries.

    python bench/registry_bench.py [--count 1000] [--domains 20] [--pg URL | --no-pg]

PostgreSQL runs when reachable (GLMBOT_TEST_PG_URL, else postgres:postgres@127.0.0.1:5432);
each run uses a fresh schema and drops it. Timings on a shared machine are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.fingerprint import architecture
from glmbot.model.prefix_io import EMBEDDING_KEY
from glmbot.registry import Registry

CONFIG = ChatGLMConfig(num_layers=2, padded_vocab_size=128, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
                       num_attention_heads=4, multi_query_group_num=2)
ARCH = architecture(CONFIG)
PG_DEFAULT = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"


def tiny_prefix(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {EMBEDDING_KEY: torch.randn(4, CONFIG.prefix_width, generator=g)}  # P=4: 2 kB of fp32


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Mean seconds of `repeat` calls (after a full garbage collection, so none lands inside by chance)."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


class NoFsync:
    """Ablation only: glmbot's file and folder fsyncs become no-ops (SQLite still syncs its commits)."""

    def __enter__(self) -> None:
        self.real, os.fsync = os.fsync, lambda fd: None

    def __exit__(self, *exc: object) -> None:
        os.fsync = self.real


# ---- the file-only baseline (official checkpoint folders) ----------------------------------------

def official_save(root: Path, domain: str, step: int, state: dict) -> None:
    folder = root / domain / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"pre_seq_len": 4, "prefix_projection": False}))


def official_scan(root: Path) -> list[dict]:
    return [json.loads(cfg.read_text()) for cfg in sorted(root.glob("*/checkpoint-*/config.json"))]


def official_latest(root: Path, domain: str) -> Path:
    return max((root / domain).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


# ---- the registry -------------------------------------------------------------------------------

def run_registry(url: str, root: Path, count: int, domains: list[str], states: list[dict]) -> dict[str, float]:
    registry = Registry(url, root)
    for domain in domains:
        registry.add_domain(domain)
    times = {}
    times["register"] = timed(lambda: [
        registry.register_adapter(domains[i % len(domains)], states[i], base_model="builtin:tiny",
                                  base_fingerprint="sha256:bench", architecture=ARCH, metrics={"rouge-l": 40.0})
        for i in range(count)])
    for domain in domains:
        registry.promote(f"{domain}@v1")
    assert len(registry.list_adapters()) == count
    times["list"] = timed(registry.list_adapters, repeat=5)
    times["list active"] = timed(lambda: registry.list_adapters(status="active"), repeat=5)
    times["resolve"] = timed(lambda: [registry.resolve(domains[i % len(domains)]) for i in range(count)])
    loads = min(count, 200)
    times["load (verified)"] = timed(lambda: [registry.load_prefix_state(f"{domains[i % len(domains)]}@v1")
                                              for i in range(loads)])
    registry.close()
    return times


def run_baseline(root: Path, count: int, domains: list[str], states: list[dict]) -> dict[str, float]:
    times = {}
    times["register"] = timed(lambda: [official_save(root, domains[i % len(domains)], i, states[i])
                                       for i in range(count)])
    assert len(official_scan(root)) == count
    times["list"] = timed(lambda: official_scan(root), repeat=5)
    times["resolve"] = timed(lambda: [official_latest(root, domains[i % len(domains)]) for i in range(count)])
    loads = min(count, 200)
    times["load (verified)"] = timed(lambda: [
        torch.load(official_latest(root, domains[i % len(domains)]) / "pytorch_model.bin", weights_only=True)
        for i in range(loads)])
    return times


def pg_schema_url(admin: str) -> tuple[str, Callable[[], None]] | None:
    """A fresh schema on the server (URL with its search_path) and a function that drops it; None if down."""
    schema = f"glmbot_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure: no PostgreSQL for this run
        print(f"PostgreSQL not reachable ({type(exc).__name__}); benchmarking SQLite only")
        return None

    def drop() -> None:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    sep = "&" if "?" in admin else "?"
    return f"{admin}{sep}options=-csearch_path%3D{schema}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--pg", default=os.environ.get("GLMBOT_TEST_PG_URL", PG_DEFAULT))
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    domains = [f"domain-{i:02d}" for i in range(args.domains)]
    states = [tiny_prefix(i) for i in range(args.count)]
    work = Path(tempfile.mkdtemp(prefix="glmbot-bench-"))
    results: dict[str, dict[str, float]] = {}
    try:
        results["files only (official)"] = run_baseline(work / "official", args.count, domains, states)
        results["registry, SQLite"] = run_registry(f"sqlite:///{work / 'sqlite' / 'registry.db'}", work / "sqlite",
                                                   args.count, domains, states)
        with NoFsync():
            results["SQLite, no fsync (ablation)"] = run_registry(
                f"sqlite:///{work / 'nofsync' / 'registry.db'}", work / "nofsync", args.count, domains, states)
        pg = None if args.no_pg else pg_schema_url(args.pg)
        if pg is not None:
            url, drop = pg
            try:
                results["registry, PostgreSQL"] = run_registry(url, work / "pg", args.count, domains, states)
            finally:
                drop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results, args.count)


def print_table(results: dict[str, dict[str, float]], count: int) -> None:
    baseline = results["files only (official)"]
    ops = {"register": count, "list": 1, "list active": 1, "resolve": count, "load (verified)": min(count, 200)}
    table = Table(title=f"registry vs official checkpoint folders, {count} adapters (timings noisy on shared CPUs)")
    for column in ("backend", "operation", "count", "total s", "per-op ms", "vs files only"):
        table.add_column(column, justify="left" if column in ("backend", "operation") else "right",
                         no_wrap=column != "backend")
    for backend, times in results.items():
        for op, seconds in times.items():
            n = ops[op]
            ratio = f"{seconds / baseline[op]:.2f}x" if op in baseline and backend != "files only (official)" else "-"
            table.add_row(backend, op, str(n), f"{seconds:.3f}", f"{seconds / n * 1000:.3f}", ratio)
    Console(width=110).print(table)
    print("SQLite runs with journal_mode=WAL, synchronous=FULL (default); the ablation skips the fsync of the\n"
          "adapter files and folders (not SQLite's own), to show what durable files cost.\n"
          "list = all adapters with metrics (registry: one query; files: glob + read every config.json).\n"
          "resolve = find a domain's serving adapter (registry: its active one; files: newest checkpoint-N).\n"
          "load = registry: read + sha256 every file + safetensors; files: torch.load(weights_only=True).")


if __name__ == "__main__":
    main()
