"""Prefix cache: each adapter's constant prefix KV, computed once, kept on the serving device.

An adapter's prefix KV does not depend on the input, so it is computed once from the registry's
verified files (`load_prefix_state` -> `prefix_encoder_from_state` -> `.kv(dtype)`) and kept in
an LRU bounded in bytes. Entries are keyed by adapter id and weights sha256 (a registry id could
in principle be reused after a removal; the hash can't). `pin` keeps entries resident.

Threading: `get` may run on many threads at once. A missing entry is loaded by the first caller
outside the cache lock (others asking for the same adapter wait for that one load; everything
else proceeds). The engine calls `get` on its request-preparation threads, never on the thread
that runs decode steps, so loading an adapter never stalls the batch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Protocol

import torch

from glmbot.errors import AdapterIntegrityError, UnknownAdapterError
from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.prefix import PrefixEncoder

log = logging.getLogger(__name__)
MIB = 1 << 20


@dataclass(frozen=True)
class ResolvedAdapter:
    """One adapter version a request will use: what identifies its prefix contents, and its names."""

    key: Hashable  # identity of the prefix contents: (adapter id, weights sha256) for the registry
    id: int | str
    ref: str  # e.g. 'support@v3'
    domain: str
    version: int | None = None
    damage: str | None = None  # the registry marked its files damaged: never served (see PrefixCache.get)
    history_rounds: int | None = None  # most earlier rounds a training row had (None: not recorded)
    data_history_rounds: int | None = None  # of those, the data's own (its follow-ups; None: not recorded)
    data_format: str | None = None  # 'chat' or 'advertisegen' (None: not recorded)


@dataclass(frozen=True)
class PrefixCacheStats:
    hits: int
    misses: int  # gets that had to load (one per load, however many callers waited on it)
    evictions: int
    bytes: int
    entries: int
    capacity_bytes: int
    pinned: int


class PrefixSource(Protocol):
    """Where prefixes come from: `resolve` a REF to an adapter, `load` its (2L, G, P, D) prefix KV
    (fp32, computed on `device` where that is faster; the cache casts it to the serving dtype).
    `damaged` is the error of an adapter resolved with `damage` set; `fallbacks` lists what a routed
    request may use instead of a damaged adapter, best first."""

    def resolve(self, ref: str | int) -> ResolvedAdapter: ...

    def load(self, adapter: ResolvedAdapter, device: torch.device) -> torch.Tensor: ...

    def damaged(self, adapter: ResolvedAdapter) -> AdapterIntegrityError: ...

    def fallbacks(self, adapter: ResolvedAdapter) -> list[ResolvedAdapter]: ...

    def questions(self, adapter: ResolvedAdapter) -> list[str] | None:
        """The adapter's training questions (None: not recorded)."""
        ...


class RegistryPrefixSource:
    """Adapters of a `glmbot.registry.Registry`, checked against the serving base's config."""

    def __init__(self, registry: Any, config: ChatGLMConfig, base_fingerprints: tuple[str, ...] = ()):
        self.registry = registry
        self.config = config
        self.base_fingerprints = base_fingerprints  # the served base's (fingerprint.base_fingerprints); empty: unchecked

    def resolve(self, ref: str | int) -> ResolvedAdapter:
        return self._resolved(self.registry.resolve(ref))

    def damaged(self, adapter: ResolvedAdapter) -> AdapterIntegrityError:
        from glmbot.registry.damage import damaged_error

        return damaged_error(self.registry.resolve(adapter.id))

    def fallbacks(self, adapter: ResolvedAdapter) -> list[ResolvedAdapter]:
        """The domain's earlier active versions not marked damaged, most recently active first."""
        return [self._resolved(info) for info in self.registry.earlier_active(adapter.domain)]

    def questions(self, adapter: ResolvedAdapter) -> list[str] | None:
        """Its routing_prompts.json (sha256-checked); None for an adapter without one (imported)."""
        from glmbot.serving.routing_setup import adapter_routing_prompts

        return adapter_routing_prompts(self.registry.resolve(adapter.id))

    @staticmethod
    def _resolved(info: Any) -> ResolvedAdapter:  # noqa: ANN401 - glmbot.registry.AdapterInfo
        from glmbot.registry.store import WEIGHTS

        rounds, own = (info.hyperparams.get(key) for key in ("history_rounds", "data_history_rounds"))
        fmt = info.hyperparams.get("data_format")
        return ResolvedAdapter((info.id, info.files.get(WEIGHTS, "")), info.id, info.ref, info.domain, info.version,
                               info.damage, _count(rounds), _count(own), fmt if isinstance(fmt, str) else None)

    def load(self, adapter: ResolvedAdapter, device: torch.device) -> torch.Tensor:
        """Verified files -> fp32 prefix KV (raises AdapterIntegrityError, PrefixCheckpointError).

        The encoder runs on the serving device in fp32, as the official code runs it before casting
        (a projection prefix at P=128 is ~30 GFLOP: seconds on a CPU, milliseconds on a GPU).
        """
        from glmbot.model.fingerprint import check_same_base, check_same_family
        from glmbot.model.prefix_io import prefix_encoder_from_state
        from glmbot.registry.store import WEIGHTS

        state, info = self.registry.load_prefix_state(adapter.id)
        check_same_family(info.base_fingerprint, self.config, info.ref)
        check_same_base(info.base_fingerprint, self.base_fingerprints, info.ref, info.domain)
        if (info.id, info.files.get(WEIGHTS, "")) != adapter.key:
            raise UnknownAdapterError(f"adapter {adapter.ref} (id {adapter.id}) was replaced while it was being "
                                      "loaded; send the request again")
        encoder = prefix_encoder_from_state(state, self.config, source=f"{info.ref} ({info.path})").to(device)
        with torch.no_grad():
            return encoder.kv()


class StaticPrefixSource:
    """Prefixes held in memory by name (tests, benchmarks, prefixes built in code): no registry."""

    def __init__(self, prefixes: Mapping[str, torch.Tensor | PrefixEncoder],
                 questions: Mapping[str, list[str]] | None = None):
        self.prefixes = dict(prefixes)
        self._questions = dict(questions or {})  # name -> its training questions ([serving] closest_question)

    def resolve(self, ref: str | int) -> ResolvedAdapter:
        name = str(ref).partition("@")[0]
        if name not in self.prefixes:
            raise UnknownAdapterError(f"unknown adapter {ref!r}; this engine serves: "
                                      f"{', '.join(sorted(self.prefixes)) or 'none'}")
        return ResolvedAdapter(("static", name), name, name, name)

    def damaged(self, adapter: ResolvedAdapter) -> AdapterIntegrityError:
        return AdapterIntegrityError(f"in-memory prefix {adapter.ref!r} is marked damaged", ref=adapter.ref,
                                     damage=adapter.damage)

    def fallbacks(self, adapter: ResolvedAdapter) -> list[ResolvedAdapter]:
        return []  # one prefix per name: nothing earlier to fall back to

    def questions(self, adapter: ResolvedAdapter) -> list[str] | None:
        return self._questions.get(adapter.domain)

    def load(self, adapter: ResolvedAdapter, device: torch.device) -> torch.Tensor:
        value = self.prefixes[adapter.domain]
        if isinstance(value, PrefixEncoder):
            with torch.no_grad():
                return value.kv()
        return value.detach()


@dataclass
class _Entry:
    adapter: ResolvedAdapter
    kv: torch.Tensor  # (2L, G, P, D) on the device, serving dtype
    nbytes: int


class _Loading:
    """One in-flight load that other callers of the same adapter wait on."""

    def __init__(self, adapter: ResolvedAdapter):
        self.adapter = adapter
        self.done = threading.Event()
        self.kv: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.stale = False  # invalidated while loading: hand it to the waiters, do not keep it


class PrefixCache:
    """LRU of prefix KV bounded in bytes; `get(ref)` loads a missing adapter on demand."""

    def __init__(self, source: PrefixSource, *, capacity_bytes: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.source = source
        self.capacity_bytes = int(capacity_bytes)
        self.device = torch.device(device)
        self.dtype = dtype
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[Hashable, _Loading] = {}
        self._pins: dict[str, Hashable | None] = {}  # pinned REF -> key it resolved to
        self._lock = threading.Lock()
        self._bytes = self._hits = self._misses = self._evictions = 0

    # ---- reading --------------------------------------------------------------------------------

    def resolve(self, ref: str | int) -> ResolvedAdapter:
        """REF -> adapter, asking the source every time (so a promoted version is seen at once)."""
        return self.source.resolve(ref)

    def fallbacks(self, adapter: ResolvedAdapter) -> list[ResolvedAdapter]:
        """What a routed request may use instead of `adapter` when it is damaged, best first."""
        return self.source.fallbacks(adapter)

    def get(self, adapter: ResolvedAdapter | str | int) -> torch.Tensor:
        """The adapter's prefix KV (2L, G, P, D) on the device, loading it if missing.

        An adapter the registry marked damaged raises AdapterIntegrityError without being read (a
        cached KV of it from before the damage is not served either: the registry says don't).
        """
        if not isinstance(adapter, ResolvedAdapter):
            adapter = self.resolve(adapter)
        if adapter.damage is not None:
            raise self.source.damaged(adapter)
        with self._lock:
            entry = self._entries.get(adapter.key)
            if entry is not None:
                self._entries.move_to_end(adapter.key)
                self._hits += 1
                return entry.kv
            loading = self._loading.get(adapter.key)
            owner = loading is None
            if owner:
                loading = self._loading[adapter.key] = _Loading(adapter)
                self._misses += 1
        if not owner:
            loading.done.wait()
            if loading.error is not None:
                raise loading.error
            return loading.kv
        return self._load(loading)

    def _load(self, loading: _Loading) -> torch.Tensor:
        adapter = loading.adapter
        try:
            kv = self.source.load(adapter, self.device).to(self.device, self.dtype).contiguous()  # (2L, G, P, D)
        except BaseException as exc:
            with self._lock:
                del self._loading[adapter.key]
            loading.error = exc
            loading.done.set()
            raise
        with self._lock:
            del self._loading[adapter.key]
            if not loading.stale:
                self._insert(adapter, kv)
        loading.kv = kv
        loading.done.set()
        log.info("loaded prefix of %s: P=%d, %.2f MiB", adapter.ref, kv.shape[2], _nbytes(kv) / MIB)
        return kv

    def _insert(self, adapter: ResolvedAdapter, kv: torch.Tensor) -> None:
        """Add an entry, evicting least recently used unpinned ones to stay within the budget."""
        size = _nbytes(kv)
        pinned = adapter.key in self._pins.values()
        victims = [k for k in self._entries if k not in self._pins.values()]
        while self._bytes + size > self.capacity_bytes and victims:
            old = self._entries.pop(victims.pop(0))
            self._bytes -= old.nbytes
            self._evictions += 1
            log.info("evicted prefix of %s from the cache", old.adapter.ref)
        if self._bytes + size > self.capacity_bytes and not pinned:
            log.warning("prefix of %s (%.2f MiB) does not fit the prefix cache (%.2f MiB, pinned entries "
                        "included); served without caching: raise [serving] prefix_cache_mib",
                        adapter.ref, size / MIB, self.capacity_bytes / MIB)
            return
        self._entries[adapter.key] = _Entry(adapter, kv, size)
        self._bytes += size

    # ---- pins and invalidation ------------------------------------------------------------------

    def pin(self, ref: str | int) -> ResolvedAdapter:
        """Load REF now and keep it resident (a domain REF follows promotions via invalidate_domain)."""
        adapter = self.resolve(ref)
        with self._lock:
            self._pins[str(ref)] = adapter.key
            entry = self._entries.get(adapter.key)
        if entry is None:
            self.get(adapter)
        return adapter

    def unpin(self, ref: str | int) -> None:
        with self._lock:
            self._pins.pop(str(ref), None)

    def invalidate(self, adapter_id: int | str) -> int:
        """Drop every entry of this adapter id (archived, removed, replaced); returns how many."""
        dropped, refs = self._drop(lambda a: a.id == adapter_id)
        self._repin(refs)
        return dropped

    def invalidate_domain(self, domain: str) -> int:
        """Drop the domain's entries (call after a promote, rollback or archive); pinned REFs of it
        are resolved again and reloaded, so a pinned 'support' follows its active version."""
        dropped, refs = self._drop(lambda a: a.domain == domain)
        with self._lock:
            refs |= {ref for ref in self._pins if ref.partition("@")[0] == domain}
        self._repin(refs)
        return dropped

    def _drop(self, match) -> tuple[int, set[str]]:  # noqa: ANN001 - Callable[[ResolvedAdapter], bool]
        """Remove matching entries; returns how many and the pinned REFs that pointed at them."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if match(e.adapter)]
            for key in keys:
                self._bytes -= self._entries.pop(key).nbytes
            for loading in self._loading.values():
                if match(loading.adapter):
                    loading.stale = True
            refs = {ref for ref, key in self._pins.items() if key in keys}
            for ref in refs:
                self._pins[ref] = None  # until pin() resolves it again
        return len(keys), refs

    def _repin(self, refs: set[str]) -> None:
        for ref in sorted(refs):
            try:
                self.pin(ref)
            except Exception as exc:  # noqa: BLE001 - e.g. the domain has no active adapter right now
                log.warning("pinned adapter %s could not be reloaded after invalidation: %s", ref, exc)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> PrefixCacheStats:
        with self._lock:
            pinned = sum(1 for k in self._entries if k in self._pins.values())
            return PrefixCacheStats(self._hits, self._misses, self._evictions, self._bytes, len(self._entries),
                                    self.capacity_bytes, pinned)

    def __contains__(self, adapter: ResolvedAdapter) -> bool:
        with self._lock:
            return adapter.key in self._entries


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _count(value: object) -> int | None:
    """A recorded round count, or None where the adapter's hyperparams have none (or not a number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
