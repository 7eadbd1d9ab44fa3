"""Prometheus text exposition (format 0.0.4) of the HTTP server's and the engine's counters.

Small enough to write by hand: counters by model and status, token counters, two histograms
(request latency, time to first token) and gauges/counters read from `Engine.stats()`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from typing import Any

from glmbot.serving.requests import GenerationResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # seconds


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            total += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return [*out, f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class ServerMetrics:
    """Thread-safe: the event loop and the turn-logging thread both record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # (model, status) -> requests
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.first_token = Histogram(LATENCY_BUCKETS)
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def ended(self, model: str, status: int | str, latency_s: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(model, str(status))] += 1
            self.latency.observe(latency_s)

    def refused(self, status: int) -> None:
        """A request turned away before its handler ran (a missing or wrong API key)."""
        with self._lock:
            self.requests[("-", str(status))] += 1

    def tokens(self, model: str, result: GenerationResult) -> None:
        with self._lock:
            self.prompt_tokens[model] += result.usage.prompt_tokens
            self.completion_tokens[model] += result.usage.completion_tokens
            if result.timings.first_token_s is not None:
                self.first_token.observe(result.timings.first_token_s)

    def render(self, engine_stats: Any) -> str:
        with self._lock:
            lines = [
                *_family("glmbot_http_requests_total", "counter", "chat completion requests by model and status",
                         {_labels(model=m, status=s): n for (m, s), n in sorted(self.requests.items())}),
                *_family("glmbot_http_requests_in_flight", "gauge", "chat completions being answered",
                         {"": self.in_flight}),
                *_family("glmbot_http_prompt_tokens_total", "counter", "prompt tokens of answered requests",
                         {_labels(model=m): n for m, n in sorted(self.prompt_tokens.items())}),
                *_family("glmbot_http_completion_tokens_total", "counter", "tokens generated for HTTP requests",
                         {_labels(model=m): n for m, n in sorted(self.completion_tokens.items())}),
                "# HELP glmbot_http_request_duration_seconds time from request to the end of its answer",
                "# TYPE glmbot_http_request_duration_seconds histogram",
                *self.latency.lines("glmbot_http_request_duration_seconds"),
                "# HELP glmbot_http_time_to_first_token_seconds engine time from submit to first token",
                "# TYPE glmbot_http_time_to_first_token_seconds histogram",
                *self.first_token.lines("glmbot_http_time_to_first_token_seconds"),
            ]
        return "\n".join([*lines, *engine_lines(engine_stats)]) + "\n"


def engine_lines(s: Any) -> list[str]:
    """Families from an EngineStats (and its PrefixCacheStats, when the engine has a cache)."""
    lines = [
        *_family("glmbot_engine_active_rows", "gauge", "batch rows generating now", {"": s.active_rows}),
        *_family("glmbot_engine_queued_requests", "gauge", "prepared requests waiting for a row", {"": s.queued}),
        *_family("glmbot_engine_peak_rows", "gauge", "most rows decoded together so far", {"": s.peak_rows}),
        *_family("glmbot_engine_decode_steps_total", "counter", "decode steps run", {"": s.decode_steps}),
        *_family("glmbot_engine_decode_tokens_total", "counter", "tokens produced by decode steps",
                 {"": s.decode_tokens}),
        *_family("glmbot_engine_decode_seconds_total", "counter", "time spent in decode steps",
                 {"": round(s.mean_decode_step_ms * s.decode_steps / 1e3, 6)}),
        *_family("glmbot_engine_prefill_tokens_total", "counter", "prompt tokens prefilled", {"": s.prefill_tokens}),
        *_family("glmbot_engine_prefill_forwards_total", "counter", "prefill forwards run",
                 {"": s.prefill_forwards}),
        *_family("glmbot_engine_prefill_seconds_total", "counter", "time spent in prefill forwards",
                 {"": round(s.prefill_s, 6)}),
        *_family("glmbot_engine_mixed_steps_total", "counter", "decode steps that prefilled prompt tokens in "
                 "the same forward", {"": s.mixed_steps}),
        *_family("glmbot_engine_graph_replays_total", "counter", "prompt forwards and decode steps with prompt "
                 "tokens inside replayed from a CUDA graph",
                 {_labels(forward="prefill"): s.prefill_replays, _labels(forward="mixed"): s.mixed_replays}),
        *_family("glmbot_engine_idle_seconds_total", "counter", "time the engine thread waited with no work",
                 {"": round(s.idle_s, 6)}),
        *_family("glmbot_engine_handoff_waits_total", "counter", "waits after a step for its answered requests' "
                 "clients to send their next ones, by whether all of them came in time",
                 {_labels(outcome="taken"): s.handoff_taken, _labels(outcome="missed"): s.handoff_missed}),
        *_family("glmbot_engine_handoff_seconds_total", "counter", "time spent in those waits",
                 {"": round(s.handoff_s, 6)}),
        *_family("glmbot_engine_finished_total", "counter", "requests finished by reason",
                 {_labels(reason=r): n for r, n in sorted(s.finished.items())}),
    ]
    cache = s.prefix_cache
    if cache is not None:
        lines += [
            *_family("glmbot_prefix_cache_hits_total", "counter", "prefix KV found in the cache", {"": cache.hits}),
            *_family("glmbot_prefix_cache_misses_total", "counter", "prefix KV loaded on a miss", {"": cache.misses}),
            *_family("glmbot_prefix_cache_evictions_total", "counter", "prefix KV evicted", {"": cache.evictions}),
            *_family("glmbot_prefix_cache_bytes", "gauge", "bytes of cached prefix KV", {"": cache.bytes}),
            *_family("glmbot_prefix_cache_entries", "gauge", "adapters in the prefix cache", {"": cache.entries}),
        ]
    return lines


def _family(name: str, kind: str, help_text: str, samples: dict[str, float]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
            *(f"{name}{labels} {value}" for labels, value in samples.items())]


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"
