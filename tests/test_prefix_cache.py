"""Prefix cache: LRU bounded in bytes, pins, invalidation, one load per adapter under concurrency."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from glmbot.errors import AdapterIntegrityError, UnknownAdapterError
from glmbot.serving.prefix_cache import PrefixCache, ResolvedAdapter, StaticPrefixSource

KV_SHAPE = (4, 2, 4, 16)  # (2L, G, P, D): 512 fp32 values = 2048 bytes
ENTRY = 2048


class CountingSource(StaticPrefixSource):
    """In-memory prefixes that count loads, can be slow, can fail, and can change version (promote)."""

    def __init__(self, names, delay: float = 0.0):
        super().__init__({n: torch.full(KV_SHAPE, float(i)) for i, n in enumerate(names)})
        self.version = {n: 1 for n in names}
        self.loads: list[str] = []
        self.delay = delay
        self.broken: set[str] = set()

    def resolve(self, ref):
        name = str(ref).partition("@")[0]
        if name not in self.prefixes:
            raise UnknownAdapterError(f"unknown adapter {ref!r}")
        v = self.version[name]
        return ResolvedAdapter((name, v), f"{name}-{v}", f"{name}@v{v}", name, v)

    def load(self, adapter, device):
        self.loads.append(adapter.ref)
        time.sleep(self.delay)
        if adapter.domain in self.broken:
            raise AdapterIntegrityError(f"{adapter.ref} failed its sha256 check")
        return self.prefixes[adapter.domain] + adapter.version * 100


def test_lru_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    source = CountingSource("abcd")
    cache = PrefixCache(source, capacity_bytes=2 * ENTRY)
    cache.get("a"), cache.get("b"), cache.get("a")  # a is now the most recent
    cache.get("c")  # evicts b
    assert [e.adapter.domain for e in cache._entries.values()] == ["a", "c"]
    assert torch.equal(cache.get("a"), torch.full(KV_SHAPE, 100.0))
    cache.get("b")  # reload; evicts c
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.entries, stats.bytes) == (2, 4, 2, 2, 2 * ENTRY)
    assert source.loads == ["a@v1", "b@v1", "c@v1", "b@v1"]


def test_prefix_kv_is_kept_in_the_serving_dtype():
    cache = PrefixCache(CountingSource("a"), capacity_bytes=ENTRY, dtype=torch.bfloat16)
    kv = cache.get("a")
    assert kv.dtype == torch.bfloat16 and cache.stats().bytes == ENTRY // 2


def test_an_entry_larger_than_the_budget_is_served_but_not_kept():
    cache = PrefixCache(CountingSource("a"), capacity_bytes=ENTRY - 1)
    assert cache.get("a").shape == KV_SHAPE
    assert cache.stats().entries == 0 and cache.stats().bytes == 0


def test_pins_stay_resident_and_follow_a_promotion():
    source = CountingSource("abc")
    cache = PrefixCache(source, capacity_bytes=2 * ENTRY)
    cache.pin("a")
    for name in "bcbcb":
        cache.get(name)
    assert cache.resolve("a") in cache and cache.stats().pinned == 1
    source.version["a"] = 2  # promote a@v2
    assert cache.invalidate_domain("a") == 1
    assert source.loads[-1] == "a@v2" and cache.resolve("a") in cache  # re-pinned at once
    cache.unpin("a")
    cache.get("b"), cache.get("c")
    assert cache.resolve("a") not in cache


def test_invalidate_drops_one_adapter_id():
    source = CountingSource("ab")
    cache = PrefixCache(source, capacity_bytes=4 * ENTRY)
    cache.get("a"), cache.get("b")
    assert cache.invalidate("a-1") == 1 and cache.invalidate("nosuch") == 0
    assert cache.stats().entries == 1 and cache.resolve("b") in cache


def test_concurrent_gets_of_a_missing_adapter_load_it_once():
    source = CountingSource("ab", delay=0.2)
    cache = PrefixCache(source, capacity_bytes=4 * ENTRY)
    results, errors = [], []

    def get(name):
        try:
            results.append((name, cache.get(name)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=get, args=(n,)) for n in "aaaaab"]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(source.loads) == ["a@v1", "b@v1"]
    assert time.perf_counter() - start < 0.35  # a and b loaded side by side, waiters shared a's load
    assert all(kv is results[0][1] for name, kv in results if name == results[0][0])


def test_a_failed_load_reaches_every_waiter_and_is_not_cached():
    source = CountingSource("a", delay=0.1)
    source.broken.add("a")
    cache = PrefixCache(source, capacity_bytes=ENTRY)
    errors = []

    def get():
        try:
            cache.get("a")
        except AdapterIntegrityError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and source.loads == ["a@v1"]
    source.broken.clear()
    assert cache.get("a").shape == KV_SHAPE and source.loads == ["a@v1", "a@v1"]


def test_unknown_adapter_names_what_exists():
    cache = PrefixCache(StaticPrefixSource({"support": torch.zeros(KV_SHAPE)}), capacity_bytes=ENTRY)
    with pytest.raises(UnknownAdapterError, match="serves: support"):
        cache.get("nosuch")
