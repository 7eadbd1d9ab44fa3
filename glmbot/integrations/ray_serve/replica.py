"""One Ray Serve replica: one glmbot engine on one base model (one GPU, or CPU), many adapters.

The ingress routes; a replica serves what it is sent. Its adapters are Ray's multiplexed
"models" (`serve.multiplexed`, keyed by domain or REF): the first request of a domain on a
replica warms its prefix into the engine's prefix cache, Ray then prefers this replica for that
domain, and when Ray's LRU drops the domain (more than [ray] max_adapters_per_replica) the
prefix leaves the cache too. Everything else is the engine of one machine: the registry is read
on every request (promotions, rollbacks), a damaged adapter falls back as it does there, and
requests of all domains on the replica share its batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from glmbot.config import Settings
from glmbot.errors import GlmbotError
from glmbot.serving.requests import GenerationRequest

log = logging.getLogger(__name__)


class AdapterLease:
    """A domain (or REF) held hot on a replica while Ray's multiplexing LRU keeps it: when Ray drops
    it, its prefix leaves the engine's cache too, so the cache holds what Ray routes here."""

    def __init__(self, key: str, engine: Any, held: set[str]):
        self.key, self.engine, self.held, self.released = key, engine, held, False
        held.add(key)

    def __del__(self) -> None:  # Ray calls it on LRU eviction (and Python may again later)
        if self.released:
            return
        self.released = True
        self.held.discard(self.key)
        cache = self.engine.prefix_cache
        if cache is None:
            return
        if "@" not in self.key:
            self.engine.invalidate_domain(self.key)
            return
        try:
            self.engine.invalidate_adapter(cache.resolve(self.key).id)
        except GlmbotError:  # gone from the registry: nothing of it is served any more
            pass


class GlmbotReplica:
    """Ray Serve deployment class (options come from [ray]: see application.py)."""

    def __init__(self, settings: Settings, engine_kwargs: dict[str, Any] | None = None):
        from glmbot.model import load_base
        from glmbot.plugins import get_manager
        from glmbot.registry import Registry
        from glmbot.serving.factory import build_engine

        m = settings.model
        model, tokenizer = load_base(m.base_model, dtype=m.dtype, device=m.device)
        self.registry = Registry.from_settings(settings)
        self.engine = build_engine(settings, model, tokenizer, self.registry, get_manager(settings),
                                   **(engine_kwargs or {}))
        self.id = serve.get_replica_context().replica_id.to_full_id_str()
        self.held: set[str] = set()
        self.requests: Counter[str] = Counter()  # by multiplexed key ('' = plain base / no key)
        self.loads = 0
        # Made here so that [ray] max_adapters_per_replica sets Ray's LRU size (Ray keeps its state on the
        # function object, which a bound method cannot carry: hence the closure).
        async def load_adapter(key: str) -> AdapterLease:
            return await self._lease(key)

        self.load_adapter = serve.multiplexed(max_num_models_per_replica=settings.ray.max_adapters_per_replica)(
            load_adapter)

    async def _lease(self, key: str) -> AdapterLease:
        await asyncio.to_thread(self._warm, key)
        self.loads += 1
        return AdapterLease(key, self.engine, self.held)

    def _warm(self, key: str) -> None:
        """Load the active prefix of `key` into the cache. Problems are left to the request itself,
        which the engine answers as on one machine (404 unknown, fallback for a damaged adapter)."""
        cache = self.engine.prefix_cache
        if cache is None:
            return
        try:
            cache.get(cache.resolve(key))
        except GlmbotError as exc:
            log.info("adapter %s not warmed on %s: %s", key, self.id, exc)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[tuple[str, Any]]:
        """("delta", text)* then ("result", GenerationResult) or ("error", GlmbotError)."""
        key = serve.get_multiplexed_model_id()
        if key:
            await self.load_adapter(key)
        self.requests[key] += 1
        handle = self.engine.submit(request)
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for delta in handle.astream():
                    queue.put_nowait(delta)
            except GlmbotError:
                pass  # handle.result() raises it below
            finally:
                queue.put_nowait(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                item = await queue.get()
                deltas = [item]
                while not queue.empty():  # under load several deltas wait: one message for all of them
                    deltas.append(queue.get_nowait())
                text = "".join(d for d in deltas if d is not None)
                if text:
                    yield "delta", text
                if deltas[-1] is None:
                    break
            try:
                yield "result", handle.result()
            except GlmbotError as exc:
                yield "error", exc
        finally:
            if not handle.done:  # the caller went away (or this replica is stopping)
                handle.cancel()
            pumping.cancel()

    async def complete(self, request: GenerationRequest) -> Any:
        """The whole answer (a GenerationResult) from this replica's engine. For
        `handle.broadcast("complete", request)`: ask every replica the same question (after a
        promotion, a deployment), which the load-balanced HTTP path cannot do."""
        return await self.engine.submit(request).aresult()

    async def replica_stats(self) -> dict[str, Any]:
        """This replica's id, the adapters it holds, its requests by domain, and its engine's stats."""
        return {"replica": self.id, "adapters": sorted(self.held), "requests": dict(self.requests),
                "adapter_loads": self.loads, "engine": self.engine.stats()}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
