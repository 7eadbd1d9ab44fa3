"""The ingress's engine: routes each request here, then streams it from a replica's engine.

`RemoteEngine` has the face of `glmbot.serving.engine.Engine` that the HTTP service uses
(`submit`, `stats`, `max_len`, `max_batch_size`, `tokenizer`, `router`), so the ingress serves
the very same FastAPI app as `glmbot serve` (glmbot.http.create_app) over Ray Serve replicas:

    submit(request)                               (on the ingress's event loop)
      route_request(router, ...)                  glmbot's router, as on one machine (a thread)
      replicas.options(stream=True, multiplexed_model_id=<domain or REF>).generate.remote(request)
      ("delta", text)* then ("result", GenerationResult) | ("error", GlmbotError)  -> RemoteHandle

The multiplexed model id is the route's domain (or the pinned REF, e.g. support@v2): Ray sends it
to a replica that already holds that domain, so that replica's prefix cache stays hot. The
replica resolves the domain's active version on every request, as one engine does, so a
promotion or rollback is seen by every replica on its next request. A replica that dies under a
request ends it with ServingUnavailableError (HTTP 503), never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from glmbot.errors import GlmbotError, ServingUnavailableError
from glmbot.model.family import CHATGLM2
from glmbot.serving.engine import EngineStats
from glmbot.serving.prefix_cache import PrefixCacheStats
from glmbot.serving.requests import GenerationRequest, RequestHandle, chat_turns
from glmbot.serving.router import RouteDecision
from glmbot.serving.routing_setup import RegistryFollower, route_request
from glmbot.serving.scheduler import finish_without_row

log = logging.getLogger(__name__)
STATS_EVERY_S = 1.0  # how stale /health and /metrics may be (replica stats are gathered in the background)
STATS_TIMEOUT_S = 5.0


def multiplex_key(route: RouteDecision) -> str:
    """Ray's multiplexed model id of a route: its pinned REF, else its domain; '' for the plain base."""
    return route.adapter or route.domain or ""


class RemoteHandle(RequestHandle):
    """A RequestHandle filled from a replica's stream instead of a local engine thread."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        super().__init__(request, self._stop)
        self.loop = loop
        self.task: asyncio.Task | None = None
        self.key: str | None = None  # the multiplexed model id it was sent with ('' = any replica)

    def _stop(self) -> None:
        """cancel(): stop the replica's generator (its engine frees the row) and end this handle."""
        if self.task is not None and not self.task.done():
            self.loop.call_soon_threadsafe(self.task.cancel)


class RemoteEngine:
    """Engine-shaped front of a Ray Serve deployment of GlmbotReplica (see the module docstring)."""

    def __init__(self, replicas: Any, *, router: Any, settings: Any, registry: Any, tokenizer: Any, max_len: int):
        self.replicas = replicas  # a DeploymentHandle of GlmbotReplica
        self.router, self.settings, self.registry, self.tokenizer = router, settings, registry, tokenizer
        # Routing follows promotions and archivals made while serving (None: nothing to follow).
        self._follower = (RegistryFollower(router, settings, registry)
                          if router is not None and registry is not None else None)
        self.max_len = max_len
        self.family = getattr(tokenizer, "family", None) or CHATGLM2  # the replicas' base family
        self.max_batch_size = settings.serving.max_batch_size  # per replica
        self.prefix_cache = None  # the replicas hold the prefixes; /v1/models reads the registry
        self._stats = combine_stats([])
        self._stats_at = 0.0
        self._stats_task: asyncio.Task | None = None
        self._closed = False

    # ---- requests ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RemoteHandle:
        """Route and send `request` from the running event loop; errors come out of the handle."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"submit() takes a GenerationRequest, got {type(request).__name__}")
        loop = asyncio.get_running_loop()
        handle = RemoteHandle(request, loop)
        handle.task = loop.create_task(self._serve(handle))
        return handle

    async def _serve(self, handle: RemoteHandle) -> None:
        request, text, stream = handle.request, [], None
        try:
            request.route = await asyncio.to_thread(self._route, request)
            request.routed_upstream = True
            handle.key = multiplex_key(request.route)
            options = {"stream": True}
            if handle.key:
                options["multiplexed_model_id"] = handle.key
            stream = self.replicas.options(**options).generate.remote(request)
            async for kind, value in stream:
                if kind == "delta":
                    text.append(value)
                    handle._push(value)
                elif kind == "result":
                    handle._finish(value)
                else:  # "error": the replica's own GlmbotError (unknown domain, too long, ...)
                    handle._finish(error=value)
            if not handle.done:
                handle._finish(error=ServingUnavailableError("the replica ended the stream without a result; "
                                                             "send the request again"))
        except asyncio.CancelledError:  # handle.cancel(): the client went away
            if stream is not None:
                stream.cancel()  # the replica's generator stops; its engine frees the row
            finish_without_row(handle, "cancelled", text="".join(text), route=request.route)
        except GlmbotError as exc:  # routing: unknown domain, bad messages
            handle._finish(error=exc)
        except Exception as exc:  # noqa: BLE001 - Ray's errors: the replica died, or none is reachable
            log.warning("request %d: the replica of %r failed: %s: %s", handle.id, handle.key, type(exc).__name__, exc)
            handle._finish(error=ServingUnavailableError(
                f"the replica serving this request stopped ({type(exc).__name__}) after {len(''.join(text))} "
                "characters of the answer; other replicas keep serving: send the request again"))
        finally:
            if not handle.done:  # never leave a waiter hanging
                finish_without_row(handle, "cancelled", text="".join(text), route=request.route)

    def _route(self, request: GenerationRequest) -> RouteDecision:
        query, history = (None, []) if request.prompt_ids is not None else chat_turns(request, self.family)
        if self._follower is not None:
            self._follower.follow()  # promotions and archivals made while serving
        return route_request(self.router, self.settings, self.registry, request, query, history)

    # ---- stats -------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """The replicas' engine stats summed (gathered at most STATS_EVERY_S ago, in the background)."""
        self._refresh_soon()
        return self._stats

    async def replica_stats(self) -> list[dict[str, Any]]:
        """Fresh stats of every live replica: its id, the domains it holds, requests by domain, engine stats."""
        results = await self.replicas.broadcast("replica_stats").results_async(
            timeout_s=STATS_TIMEOUT_S, return_exceptions=True)
        live = [r for r in results if isinstance(r, dict)]
        self._stats, self._stats_at = combine_stats([r["engine"] for r in live]), time.monotonic()
        return live

    def _refresh_soon(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._closed or time.monotonic() - self._stats_at < STATS_EVERY_S:
            return
        if self._stats_task is None or self._stats_task.done():
            self._stats_task = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.replica_stats()
        except Exception as exc:  # noqa: BLE001 - stats are best effort; requests do not depend on them
            log.warning("could not gather the replicas' stats: %s", exc)
            self._stats_at = time.monotonic()

    def close(self) -> None:
        self._closed = True
        if self._stats_task is not None:
            self._stats_task.cancel()


def combine_stats(stats: Sequence[EngineStats]) -> EngineStats:
    """Sum of several engines' stats (mean step time weighted by steps; peak rows: the largest)."""
    def total(name: str) -> Any:
        return sum(getattr(s, name) for s in stats)

    steps = total("decode_steps")
    finished: Counter[str] = Counter()
    for s in stats:
        finished.update(s.finished)
    caches = [s.prefix_cache for s in stats if s.prefix_cache is not None]
    cache = PrefixCacheStats(**{f.name: sum(getattr(c, f.name) for c in caches) for f in fields(PrefixCacheStats)}) \
        if caches else None
    mean = sum(s.mean_decode_step_ms * s.decode_steps for s in stats) / steps if steps else 0.0
    return EngineStats(
        active_rows=total("active_rows"), queued=total("queued"), decode_steps=steps,
        decode_tokens=total("decode_tokens"), mean_decode_step_ms=mean,
        peak_rows=max((s.peak_rows for s in stats), default=0), prefill_forwards=total("prefill_forwards"),
        prefill_tokens=total("prefill_tokens"), prefill_s=total("prefill_s"),
        mixed_steps=total("mixed_steps"), idle_s=total("idle_s"),
        finished=dict(finished),
        slot_bytes=total("slot_bytes"), prefix_cache=cache, prefill_replays=total("prefill_replays"),
        mixed_replays=total("mixed_replays"), handoff_taken=total("handoff_taken"),
        handoff_missed=total("handoff_missed"), handoff_s=total("handoff_s"))
