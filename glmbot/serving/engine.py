"""The serving engine: one base model, many adapters, requests of all domains in the same batch.

    with Engine(model, tokenizer, registry=registry, router=router, settings=settings) as engine:
        handle = engine.submit(GenerationRequest(messages=[{"role": "user", "content": "怎么退货？"}]))
        for delta in handle.stream():
            ...
        result = handle.result()  # text, finish_reason, usage, route, adapter, timings

Threads: `submit` returns at once. A small pool of preparation threads validates, tokenizes and
routes each request, resolves its domain's active adapter through the registry (every request,
so a promotion is seen at once) and gets the adapter's prefix KV from the prefix cache, loading
it on a miss there. Ready requests queue for the one engine thread, which admits them between
decode steps (iteration-level batching) and runs the steps. So reading adapter files never
stalls decoding. A request's problem (unknown domain, too long, NaN logits, a damaged adapter it
named) fails that request only; result() and stream() raise it. A routed request whose adapter
is damaged is answered by an earlier intact version of the domain, or the plain base model, and
its route says so (reason damaged_fallback).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Hashable, Mapping, Sequence

import torch

from glmbot.config import Settings
from glmbot.errors import AdapterIntegrityError, GenerationError, GlmbotError, UnknownAdapterError, UnknownDomainError
from glmbot.model.chat_format import stop_ids
from glmbot.model.family import family_of
from glmbot.model.fingerprint import base_fingerprints
from glmbot.model.loading import BUILTIN_SCHEME
from glmbot.model.prefix import PrefixEncoder
from glmbot.serving.answer_filters import HOOK as ANSWER_FILTERS_HOOK
from glmbot.serving.answer_filters import AnswerFilterFactory, build_chain
from glmbot.serving.prefix_cache import (MIB, PrefixCache, PrefixCacheStats, RegistryPrefixSource,
                                         ResolvedAdapter, StaticPrefixSource)
from glmbot.serving.closest import ClosestQuestion, index_of
from glmbot.serving.prompts import build_prompt, tools_refused
from glmbot.serving.requests import GenerationRequest, GenerationResult, RequestHandle, batched_wakeups
from glmbot.serving.router import (CLOSEST_QUESTION_NOTE, DAMAGED_FALLBACK, FALLBACK_REPLY_NOTE, RouteDecision,
                                   fallback_reply, leans_back, small_talk_only)
from glmbot.serving.routing_setup import RegistryFollower, route_request
from glmbot.serving.sampling import SamplingParams
from glmbot.serving.scheduler import Job, Scheduler, finish_without_row

log = logging.getLogger(__name__)

CLOSEST_CAPACITY = 256  # adapters whose training questions are indexed at once ([serving] closest_question)
DEFAULT_MAX_PREFIX_LEN = 128  # the official P; longer adapters need Engine(max_prefix_len=...)


class _Group:
    """The requests of one generate_many(): their jobs are queued together once all are prepared
    (a request answered or failed in preparation counts as prepared, with no job). Guarded by the
    engine's lock."""

    def __init__(self, size: int):
        self.left = size
        self.jobs: list[Job | None] = []

    def add(self, job: Job | None) -> list[Job | None]:
        """Note one prepared request; the whole group's jobs when it was the last, else []."""
        self.jobs.append(job)
        self.left -= 1
        return self.jobs if self.left == 0 else []


@dataclass(frozen=True)
class EngineStats:
    active_rows: int
    queued: int
    decode_steps: int
    decode_tokens: int
    mean_decode_step_ms: float
    peak_rows: int
    prefill_forwards: int  # forwards of prompt tokens alone (queued with a decode step, or while nothing decodes)
    prefill_tokens: int
    prefill_s: float  # in prefill forwards while nothing decodes (those queued with a decode step count in its time)
    mixed_steps: int  # decode steps that took prompt chunks into their forward ([serving] prefill_with_decode)
    idle_s: float  # the engine thread waited with no request to prepare, prefill or decode
    finished: dict[str, int]
    slot_bytes: int
    prefix_cache: PrefixCacheStats | None
    prefill_replays: int = 0  # prefill forwards replayed from a CUDA graph
    mixed_replays: int = 0  # decode steps with prompt tokens inside, replayed from a CUDA graph
    # handoff_wait: waits for answered requests' clients to send their next ones that ended with as many
    # prepared requests as were answered (taken), or at their limit or the queued step's end (missed)
    handoff_taken: int = 0
    handoff_missed: int = 0
    handoff_s: float = 0.0  # time spent in those waits


class AnsweredWithoutModel(Exception):
    """The request is answered without the model: by a before_generate plugin (a tool), or with
    [routing] fallback_reply."""

    def __init__(self, text: str, route: RouteDecision | None, prompt_tokens: int):
        super().__init__(text)
        self.text, self.route, self.prompt_tokens = text, route, prompt_tokens


# Engine handoff_wait: on CUDA at most half the time the host has lately spent blocked on the
# device's tokens per step (its slack: waiting longer would delay the next launch), checking every
# HANDOFF_POLL_S whether the queued step is done; without device events (CPU, asked for
# explicitly) a quarter of a mean step; never more than HANDOFF_MAX_S.
HANDOFF_SLACK_SHARE, HANDOFF_SHARE, HANDOFF_MAX_S, HANDOFF_POLL_S = 0.5, 0.25, 0.002, 0.0002
# Requests ending so may have a client that sends the next one at once (not cancelled or failed ones).
_ANSWERED = ("stop", "length", "loop")


class Engine:
    """Continuous batching over one base model with per-row P-Tuning v2 prefixes.

    registry: a glmbot Registry (adapters by domain/REF), or prefixes: {name: prefix KV
    (2L, G, P, D) or PrefixEncoder} held in memory, with questions: {name: its training questions}
    for [serving] closest_question (the registry's adapters carry theirs). router: decides the domain of requests
    that name none (without one, those go to the plain base model). max_len: prompt +
    max_new_tokens per request (default [generation] max_length, at most the model's
    seq_length); each row has max_prefix_len + max_len slots. prefill_token_budget: prompt tokens
    prefilled between two decode steps (default [serving] prefill_tokens). cuda_graph: replay the decode step
    from CUDA graphs (static shapes: batch buckets of powers of two, the full slot length).
    pipeline: queue each decode step before the previous step's tokens reach the host (default: on
    CUDA), so the host's per-token work overlaps the device's forward. kv_length_buckets: static
    decode steps read the shortest of 256, 512, ... slots that holds their rows (False: always all
    of them, for comparisons). warm_up: run each kind of forward once before any request, so
    torch.compile'd parts compile then (default: on CUDA; see Scheduler.warm_up_shapes).
    prefill_graphs: with static shapes, prompt forwards of up to ~1k tokens are padded to a few
    (rows, tokens, KV length) shapes, captured in CUDA graphs too with cuda_graph (False: they run
    as they are, eagerly; for comparisons).
    handoff_wait: after a step in which requests were answered, while the next step is already
    queued on the device, wait a little for their clients' next requests, so that one sent right
    back (a closed loop: agents, chains, benchmarks) goes into the step queued next instead of the
    one after it. The wait comes out of the host's slack: at most half the time it has lately
    spent blocked on the device's tokens per step (none when the loop is host-bound), at most 2 ms,
    and it ends when the queued step is done; on CPU (a queued step is already computed, so
    waiting only delays the next) up to a quarter of a mean step. Off by default: in an H100
    closed loop of in-process clients 92% of its waits caught the next requests and TTFT fell
    (mean 24.5 -> 22.3 ms, p99 144 -> 123), but the GPU sat idle 1.0% of the loop against 0.2%
    and the steady throughput fell 77.4% -> 76.5% of the step figure (docs/PERFORMANCE.md); HTTP
    clients, a network round trip away, seldom come back within its 2 ms.
    plugins: a PluginManager whose before_generate may answer or edit a request, whose answer
    filters (register_answer_filters, collected once here) change the answer as it streams, and
    whose after_generate may rewrite the whole answer (then every stream is sent at the end, whole).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, registry: Any = None, router: Any = None,
                 settings: Settings | None = None, prefixes: Mapping[str, torch.Tensor | PrefixEncoder] | None = None,
                 max_batch_size: int | None = None, max_len: int | None = None,
                 max_prefix_len: int = DEFAULT_MAX_PREFIX_LEN, prefill_token_budget: int | None = None,
                 static_shapes: bool = False, cuda_graph: bool = False, prepare_workers: int = 2,
                 plugins: Any = None, pipeline: bool | None = None,
                 questions: Mapping[str, list[str]] | None = None, kv_length_buckets: bool = True,
                 warm_up: bool | None = None, prefill_graphs: bool = True, handoff_wait: bool = False):
        self.settings = settings or Settings()
        self.plugins = plugins  # a glmbot.plugins.PluginManager: before/after_generate hooks
        self.answer_filters = self._collect_answer_filters(plugins)
        self._warned_damaged: set = set()  # keys of damaged adapters already logged
        config = model.config
        if model.transformer.prefix_encoder is not None:
            raise GenerationError(
                f"this base carries its own P-Tuning prefix (pre_seq_len={config.pre_seq_len}); the engine serves "
                "prefixes from the registry: load the base without pre_seq_len and import the prefix with "
                "glmbot adapters import")
        if model.training:
            raise GenerationError("the model is in training mode (dropout on): call model.eval() before serving")
        self.model, self.tokenizer, self.router = model, tokenizer, router
        self.family = getattr(tokenizer, "family", None) or family_of(config)  # one engine holds one base
        self.max_batch_size = max_batch_size or self.settings.serving.max_batch_size
        self.max_len = max_len or min(self.settings.generation.max_length, config.seq_length)
        self.max_prefix_len = max_prefix_len
        if prefill_token_budget is None:
            prefill_token_budget = self.settings.serving.prefill_tokens
        for name, value in (("max_batch_size", self.max_batch_size), ("max_len", self.max_len),
                            ("prepare_workers", prepare_workers), ("prefill_token_budget", prefill_token_budget)):
            if not isinstance(value, int) or value <= 0:
                raise GenerationError(f"{name} must be a positive integer, got {value!r}")
        if self.max_len > config.seq_length:
            raise GenerationError(f"max_len={self.max_len} is beyond the model's seq_length={config.seq_length}")
        if max_prefix_len < 0:
            raise GenerationError(f"max_prefix_len must be >= 0, got {max_prefix_len}")
        self.registry = registry
        # Routing follows promotions and archivals made while serving (None: nothing to follow).
        self._follower = (RegistryFollower(router, self.settings, registry)
                          if router is not None and registry is not None else None)
        self.prefix_cache = self._build_prefix_cache(registry, prefixes, questions)
        self._closest: OrderedDict[Hashable, ClosestQuestion | None] = OrderedDict()  # by adapter key, LRU
        self._closest_lock = threading.Lock()
        with torch.no_grad():
            self.scheduler = Scheduler(
                model, stop_ids(self.family, tokenizer), tokenizer.pad_token_id, tokenizer.decode,
                max_rows=self.max_batch_size, slot_len=max_prefix_len + self.max_len, static_shapes=static_shapes,
                cuda_graph=cuda_graph, prefill_token_budget=prefill_token_budget, pipeline=pipeline,
                prefill_wait_steps=self.settings.serving.prefill_wait_steps,
                prefill_with_decode=self.settings.serving.prefill_with_decode, kv_length_buckets=kv_length_buckets,
                warm_up=warm_up, prefill_graphs=prefill_graphs)
        if self.family.chat_format == "roles":
            self.scheduler.segment_id = tokenizer.special_ids["<|assistant|>"]
        log.info("engine: %d rows x %d slots, KV slots %.1f MiB on %s%s", self.max_batch_size,
                 self.scheduler.slots.length, self.scheduler.slots.nbytes / MIB, model.device,
                 ", CUDA graphs" if cuda_graph else "")
        if self.prefix_cache is not None:
            for ref in self.settings.serving.pin:
                self.prefix_cache.pin(ref)
        self._ready: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False  # close() began: no new requests
        self._closing = False  # the engine thread may exit once nothing is left
        self._handles: weakref.WeakSet[RequestHandle] = weakref.WeakSet()
        self._pool = ThreadPoolExecutor(prepare_workers, thread_name_prefix="glmbot-prepare")
        self._idle_s = 0.0
        self._handoff_taken = self._handoff_missed = 0
        self._handoff_s = 0.0
        self._handoff_wait = handoff_wait
        self._thread = threading.Thread(target=self._run, name="glmbot-engine", daemon=True)
        self._thread.start()

    @staticmethod
    def _collect_answer_filters(plugins: Any) -> list[tuple[str, AnswerFilterFactory]]:
        if plugins is None:
            return []
        buffering = plugins.implementers("after_generate")
        if buffering:
            log.warning("plugin(s) %s implement after_generate, which rewrites whole answers: every stream is held "
                        "back and sent at the end; an answer filter (register_answer_filters) keeps it streaming",
                        ", ".join(buffering))
        return plugins.collect(ANSWER_FILTERS_HOOK)

    def _build_prefix_cache(self, registry: Any, prefixes: Mapping | None,
                            questions: Mapping | None) -> PrefixCache | None:
        if registry is not None and prefixes is not None:
            raise GenerationError("give the engine a registry or in-memory prefixes, not both")
        if registry is None and prefixes is None:
            return None
        source = RegistryPrefixSource(registry, self.model.config, base_fingerprints(self.model)) \
            if registry is not None else StaticPrefixSource(prefixes, questions)
        capacity = int(self.settings.serving.prefix_cache_mib * MIB)
        return PrefixCache(source, capacity_bytes=capacity, device=self.model.device, dtype=self.model.dtype)

    # ---- public API ------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; returns at once. Its errors come out of the handle's result()/stream()."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"submit() takes a GenerationRequest, got {type(request).__name__}")
        return self._submit([request])[0]

    def _submit(self, requests: Sequence[GenerationRequest], group: _Group | None = None) -> list[RequestHandle]:
        with self._cond:  # all or none: a closing engine refuses the whole call
            if self._stopping:
                raise GenerationError("the engine is closed; create a new Engine to serve more requests")
            handles = [RequestHandle(r, self._wake) for r in requests]
            self._handles.update(handles)
        for handle in handles:
            self._pool.submit(self._prepare, handle, group)
        return handles

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.submit(request).result()

    def generate_many(self, requests: Sequence[GenerationRequest],
                      return_exceptions: bool = False) -> list[GenerationResult | BaseException]:
        """All requests batched together; results in order. With return_exceptions, a failed request
        gives its exception in its place instead of raising it.

        The requests are prepared (tokenized, routed, prefixes loaded) side by side, and queued
        for rows together once all are ready: a quick one does not start decoding alone while the
        others are still being prepared (rows permitting, they share every decode step)."""
        for r in requests:
            if not isinstance(r, GenerationRequest):
                raise TypeError(f"generate_many() takes GenerationRequests, got {type(r).__name__}")
        handles = self._submit(requests, _Group(len(requests)))
        results: list[GenerationResult | BaseException] = []
        for handle in handles:
            try:
                results.append(handle.result())
            except Exception as exc:
                if not return_exceptions:
                    raise
                results.append(exc)
        return results

    def invalidate_adapter(self, adapter_id: int | str) -> int:
        """Forget a cached prefix (its adapter was archived, removed or replaced)."""
        return self.prefix_cache.invalidate(adapter_id) if self.prefix_cache is not None else 0

    def invalidate_domain(self, domain: str) -> int:
        """Forget a domain's cached prefixes (after a promote or rollback)."""
        return self.prefix_cache.invalidate_domain(domain) if self.prefix_cache is not None else 0

    def stats(self) -> EngineStats:
        s = self.scheduler.stats
        with self._cond:
            taken, missed, handoff_s = self._handoff_taken, self._handoff_missed, self._handoff_s
        return EngineStats(
            active_rows=len(self.scheduler.active), queued=len(self._ready), decode_steps=s.decode_steps,
            decode_tokens=s.decode_tokens, mean_decode_step_ms=1e3 * s.decode_s / max(s.decode_steps, 1),
            peak_rows=s.peak_rows,
            prefill_forwards=s.prefill_forwards, prefill_tokens=s.prefill_tokens, prefill_s=s.prefill_s,
            mixed_steps=s.mixed_steps, idle_s=self._idle_s, finished=dict(s.finished),
            slot_bytes=self.scheduler.slots.nbytes,
            prefix_cache=self.prefix_cache.stats() if self.prefix_cache is not None else None,
            prefill_replays=s.prefill_replays, mixed_replays=s.mixed_replays,
            handoff_taken=taken, handoff_missed=missed, handoff_s=handoff_s)

    def close(self, wait: bool = False) -> None:
        """Stop the engine. wait=False cancels unfinished requests; wait=True lets them finish first."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            open_handles = [h for h in self._handles if not h.done]
        if not wait:
            for handle in open_handles:
                handle.cancel()
        self._pool.shutdown(wait=True)  # every request is queued (or finished) after this
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- preparation (pool threads) ----------------------------------------------------------------

    def _prepare(self, handle: RequestHandle, group: _Group | None = None) -> None:
        job = None
        try:
            if handle.cancelled:
                finish_without_row(handle, "cancelled")
            else:
                with torch.no_grad():
                    job = self._make_job(handle)
        except AnsweredWithoutModel as answered:  # a plugin (e.g. a tool) or fallback_reply answered
            handle._push(answered.text)
            finish_without_row(handle, "stop", text=answered.text, route=answered.route,
                               prompt_tokens=answered.prompt_tokens)
        except Exception as exc:  # noqa: BLE001 - every error belongs to this request only
            if not isinstance(exc, GlmbotError):
                log.exception("request %d failed while being prepared", handle.id)
            finish_without_row(handle, "error", error=exc)
        with self._cond:
            jobs = [job] if group is None else group.add(job)  # a group's jobs queue when its last is prepared
            ready = [j for j in jobs if j is not None]
            if ready:
                self._ready.extend(ready)
                self._cond.notify_all()

    def _make_job(self, handle: RequestHandle) -> Job:
        req = handle.request
        gen = self.settings.generation
        params = SamplingParams(
            do_sample=gen.do_sample if req.do_sample is None else bool(req.do_sample),
            temperature=gen.temperature if req.temperature is None else req.temperature,
            top_p=gen.top_p if req.top_p is None else req.top_p,
            top_k=gen.top_k if req.top_k is None else req.top_k,
            repetition_penalty=gen.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            seed=req.seed)
        max_new = gen.max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new <= 0:
            raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new!r}")
        if isinstance(req.stop, str) or not all(isinstance(s, str) and s for s in req.stop):
            raise GenerationError(f"stop must be a list of non-empty strings, got {req.stop!r}")
        query, history, prompt_ids = self._prompt(req)
        if self._follower is not None:
            self._follower.follow()
        route = self._route(req, query, history)
        req.route = route
        rewrite = None
        if self.plugins is not None and query is not None:
            prompt_ids, rewrite = self._plugins_before(req, query, prompt_ids)
        route, adapter, prefix = self._current_prefix(req, route, query, history)
        req.route = route
        reply = fallback_reply(route, query, self.settings.routing.fallback_reply) if query is not None else None
        if reply is not None:  # a fixed answer rather than one the plain base makes up
            note = FALLBACK_REPLY_NOTE
            req.route = replace(route, detail=f"{route.detail}; {note}" if route.detail else note)
            raise AnsweredWithoutModel(reply, req.route, len(prompt_ids))
        if req.prompt_ids is None and adapter is not None:
            alone = self._asks_alone(adapter, query)
            prompt_ids = self._latest_rounds(req, history, 0 if alone else adapter.history_rounds, prompt_ids)
            earlier = None if alone else self._earlier_question(req, adapter, query, history)
            # the question after plugins' edits (before_generate may rewrite it); without plugins, the one read above
            current = query if self.plugins is None else self._prompt(req)[0]
            asked = self._closest_question(adapter, current, earlier) if (alone or earlier) and not req.tools else None
            if asked is not None:
                prompt_ids = self.tokenizer.build_chat_input(asked, [])
                after = f", with {earlier!r} before it" if earlier else ""
                note = f"{CLOSEST_QUESTION_NOTE} {asked!r}{after} ([serving] closest_question)"
                route = replace(route, detail=f"{route.detail}; {note}" if route.detail else note)
                req.route = route
        elif req.prompt_ids is None and prefix is None and query is not None and (
                small_talk_only(query) or (self._builtin_base and self.router is not None
                                           and route.reason not in ("explicit", "plugin"))):
            # "你好" asks nothing the rounds hold; the builtin base answers general chat best alone
            prompt_ids = self._latest_rounds(req, history, 0, prompt_ids)
        n = len(prompt_ids)
        if n + max_new > self.max_len:
            raise GenerationError(
                f"prompt of {n} tokens + max_new_tokens {max_new} = {n + max_new} tokens exceeds this engine's "
                f"context limit max_len={self.max_len}; shorten the conversation (fewer history turns) or set "
                f"max_new_tokens to at most {max(self.max_len - n, 0)}")
        if prefix is not None and prefix.shape[2] > self.max_prefix_len:
            raise GenerationError(f"adapter {adapter.ref} has a prefix of {prefix.shape[2]} positions but this engine "
                                  f"holds at most max_prefix_len={self.max_prefix_len}; start the engine with "
                                  f"max_prefix_len>={prefix.shape[2]}")
        filters = None
        if self.answer_filters:
            filters = build_chain(self.answer_filters, req, on_error=lambda name, exc: self.plugins.hook_failed(
                name, ANSWER_FILTERS_HOOK, exc))
        tools_family = self.family if req.tools and req.prompt_ids is None else None
        return Job(handle, prompt_ids, prefix, params, max_new, tuple(req.stop), bool(req.ignore_eos), route, adapter,
                   rewrite, filters, tools_family, loop_stop=0 if req.ignore_eos else gen.loop_stop)

    def _latest_rounds(self, req: GenerationRequest, history: list[tuple[str, str]], rounds: int | None,
                       prompt_ids: list[int]) -> list[int]:
        """The prompt with only the latest `rounds` earlier rounds (None: all), under [serving]
        prefix_history = "trained" (ChatGLM2's [Round N] prompt). A prefix gets as many as its
        training rows had: on the builtin base one trained behind one round answered 12/15 questions
        as a second turn but 3/15 as a third with every round shown. Small talk alone for the plain
        base gets none: behind two rounds of a domain's Q/A the builtin base garbled 你好 and 你是谁."""
        if self.settings.serving.prefix_history == "all" or rounds is None or self.family.chat_format != "rounds":
            return prompt_ids
        if not history:  # the common case: nothing to leave out, no second tokenization
            return prompt_ids
        # Rounds of small talk alone ("谢谢" / "不客气") hold nothing to follow up on, and a prefix's
        # training rows only ever had a domain round before them: the latest rounds that ask something,
        # of the prefix's own domain where the router tells them apart.
        asking = [history[i] for i in self._own_rounds(req.route, history) if not small_talk_only(history[i][0])]
        if len(asking) == len(history) and len(history) <= rounds:
            return prompt_ids
        query, _, _ = self._prompt(req)  # after plugins' edits of the question
        return self.tokenizer.build_chat_input(query, asking[-rounds:] if rounds else [])  # all where fewer ask

    def _own_rounds(self, route: RouteDecision | None, history: list[tuple[str, str]]) -> list[int]:
        """The indices of the earlier rounds a routed domain's prefix is shown: those the router sends
        to that domain when it replays the conversation. A round of general chat that went to the plain
        base in between (off the domain's topic) is left out: shown "帮我写一首诗" and its poem as the one
        earlier round, a newcomer's dental prefix answered 3 of 12 follow-up questions wrong. A domain
        asked for by name or chosen by a plugin router (not replayed), or a conversation none of whose
        rounds replays to the domain, keeps all its rounds."""
        every = list(range(len(history)))
        if self.router is None or route is None or route.domain is None or route.reason in ("explicit", "plugin"):
            return every
        own = self.router.rounds_of(route.domain, history)
        return own or every

    def _asks_alone(self, adapter: ResolvedAdapter, query: str | None) -> bool:
        """On the builtin base a domain's prefix answers a question best without the earlier rounds: a
        newcomer's piano school answered 10 of 29 training questions exact behind one earlier question,
        29 alone; the tuning domains' paraphrases scored ROUGE-L 62.0 alone, 36.1 behind a round. A short
        follow-up that takes its topic from them ("那周末呢？", `leans_back`), a prefix whose own data has
        follow-ups and a real base (ChatGLM2-6B) keep them."""
        return (self._builtin_base and query is not None and not adapter.data_history_rounds
                and not leans_back(query))

    def _earlier_question(self, req: GenerationRequest, adapter: ResolvedAdapter, query: str | None,
                          history: list[tuple[str, str]]) -> str | None:
        """On the builtin base, the question a short follow-up leans on ("那周末呢？"): the latest earlier one
        of the prefix's own rounds that asks something; None elsewhere."""
        if not (self._builtin_base and query is not None and history and leans_back(query)
                and not adapter.data_history_rounds):
            return None
        asking = [history[i][0] for i in self._own_rounds(req.route, history) if not small_talk_only(history[i][0])]
        return asking[-1] if asking else None

    def _closest_question(self, adapter: ResolvedAdapter, query: str | None, earlier: str | None = None) -> str | None:
        """The adapter's training question that `query` rewords, or asks after `earlier` ([serving]
        closest_question, builtin base only: glmbot/serving/closest.py), or None."""
        if query is None or not self.settings.serving.closest_question or self.prefix_cache is None:
            return None
        with self._closest_lock:
            if adapter.key in self._closest:
                self._closest.move_to_end(adapter.key)
                index = self._closest[adapter.key]
                return _stands_for(index, query, earlier)
        try:
            questions = self.prefix_cache.source.questions(adapter)
        except GlmbotError as exc:  # a damaged routing_prompts.json: the user's words, as without one
            log.warning("adapter %s: its training questions could not be read (%s); answering the words as asked",
                        adapter.ref, exc)
            questions = None
        index = index_of(adapter.data_format, questions)
        with self._closest_lock:
            self._closest[adapter.key] = index
            while len(self._closest) > CLOSEST_CAPACITY:
                self._closest.popitem(last=False)
        return _stands_for(index, query, earlier)

    @cached_property
    def _builtin_base(self) -> bool:
        """A builtin base (9.6M parameters) answers general chat best without earlier rounds: behind one
        support round it answered 一年有几个季节 with a florist's opening hours, and only 24 of a newcomer's 80
        first messages (bench/chat) as it answers them alone; behind one round of general chat, 28. Routed
        general chat reaches it alone; a real base (ChatGLM2-6B) and the base asked for by name see every
        round."""
        return str(getattr(self.model.config, "name_or_path", "")).startswith(BUILTIN_SCHEME)

    def _plugins_before(self, req: GenerationRequest, query: str, prompt_ids: list[int]):
        """before_generate may answer (a tool) or edit the question; after_generate becomes the rewrite."""
        answer = next(iter(self.plugins.call("before_generate", request=req)), None)
        if answer is not None:
            raise AnsweredWithoutModel(str(answer), req.route, len(prompt_ids))
        edited, _, edited_ids = self._prompt(req)
        if edited != query:
            prompt_ids = edited_ids
        rewrite = None
        if self.plugins.has_impls("after_generate"):
            def rewrite(text: str) -> str:
                return self.plugins.chain("after_generate", "response", request=req, response=text)
        return prompt_ids, rewrite

    def _prompt(self, req: GenerationRequest) -> tuple[str | None, list[tuple[str, str]], list[int]]:
        if req.prompt_ids is None:
            if req.tools and not self.family.native_tools:
                raise tools_refused(self.family)
            return build_prompt(req, self.tokenizer, self.family)
        ids = [int(i) for i in req.prompt_ids]
        vocab = self.model.config.padded_vocab_size
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise GenerationError(f"prompt_ids must be a non-empty list of ids in [0, {vocab}), "
                                  f"got {req.prompt_ids!r:.80}")
        return None, [], ids

    def _route(self, req: GenerationRequest, query: str | None, history: list) -> RouteDecision:
        if req.routed_upstream and req.route is not None:  # the Ray Serve ingress routed it; replicas follow
            return req.route
        return route_request(self.router, self.settings, self.registry, req, query, history)

    def _current_prefix(self, req: GenerationRequest, route: RouteDecision, query: str | None,
                        history: list) -> tuple[RouteDecision, ResolvedAdapter | None, torch.Tensor | None]:
        """`_prefix`; a routed domain whose active adapter was archived since the router last followed
        the registry is routed again over the domains served now, rather than failing the request."""
        try:
            return self._prefix(route)
        except UnknownAdapterError:
            if route.reason == "explicit" or self._follower is None:
                raise
            self._follower.follow(now=True)
            return self._prefix(self._route(req, query, history))

    def _prefix(self, route: RouteDecision) -> tuple[RouteDecision, ResolvedAdapter | None, torch.Tensor | None]:
        """The route's adapter and prefix KV; a routed request whose adapter is damaged gets a new route."""
        if route.domain is None:
            return route, None, None
        if self.prefix_cache is None:
            raise UnknownDomainError(f"domain {route.domain!r} was requested but this engine has no adapters (it was "
                                     "started without a registry or prefixes); omit the domain for the plain model")
        adapter = self.prefix_cache.resolve(route.adapter or route.domain)
        try:
            return route, adapter, self.prefix_cache.get(adapter)
        except AdapterIntegrityError as exc:
            if route.reason == "explicit":  # asked for by name: say so rather than answer with something else
                raise
            return self._fall_back(route, adapter, exc)

    def _fall_back(self, route: RouteDecision, damaged: ResolvedAdapter, error: AdapterIntegrityError):
        """A routed request whose adapter is damaged goes to the domain's most recently active intact version,
        else to the plain base model; the route (reason damaged_fallback), the result and the log say so."""
        chosen, prefix = None, None
        for candidate in self.prefix_cache.fallbacks(damaged):
            try:
                prefix = self.prefix_cache.get(candidate)
            except GlmbotError as exc:  # damaged too (now marked), or unusable: try the next
                log.warning("fallback %s for damaged %s is unusable: %s", candidate.ref, damaged.ref, exc)
                continue
            chosen = candidate
            break
        instead = chosen.ref if chosen is not None else "the plain base model"
        detail = (f"{damaged.ref} is damaged ({error.damage or error}); answered by {instead}. Fix: glmbot adapters "
                  f"verify {damaged.ref}, or glmbot adapters rollback {damaged.domain}")
        if damaged.key not in self._warned_damaged:  # once per adapter: every routed request of it comes here
            self._warned_damaged.add(damaged.key)
            log.warning("routed requests for %s fall back: %s", damaged.domain, detail)
        new = RouteDecision(chosen.domain if chosen else None, chosen.ref if chosen else None, DAMAGED_FALLBACK,
                            route.score, route.scores, detail, damaged=damaged.ref)
        return new, chosen, prefix

    # ---- the engine thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    idle_from = time.perf_counter()
                    while not self._ready and not self.scheduler.active and not self._closing:
                        self._cond.wait()
                    self._idle_s += time.perf_counter() - idle_from
                    if self._closing and not self._ready and not self.scheduler.active:
                        return
                    take = min(len(self._ready), self.scheduler.free_rows)
                    jobs = [self._ready.popleft() for _ in range(take)]
                finished = self._finished_count() if self._handoff_wait else 0
                self._iterate(jobs)
                if self._handoff_wait:
                    self._await_handoff(self._finished_count() - finished)

    def _finished_count(self) -> int:
        """Requests answered so far (see _ANSWERED)."""
        finished = self.scheduler.stats.finished
        return sum(finished.get(reason, 0) for reason in _ANSWERED)

    def _await_handoff(self, finished: int) -> None:
        """Give the clients of the `finished` requests a moment to send their next ones (see
        handoff_wait), while the device runs the step already queued: the wait ends when they
        are prepared, at its limit, or as soon as that step is done."""
        scheduler = self.scheduler
        steps, queued = scheduler.stats.decode_steps, scheduler.inflight
        if not finished or not steps or not scheduler.free_rows or queued is None:
            return
        limit = (HANDOFF_SLACK_SHARE * scheduler.blocked_s if queued.ready is not None
                 else HANDOFF_SHARE * scheduler.stats.decode_s / steps)
        start = time.perf_counter()
        deadline = start + min(HANDOFF_MAX_S, limit)
        with self._cond:
            if limit <= 0 or len(self._ready) >= finished:  # no slack, or enough requests queued already: no wait
                return
            while len(self._ready) < finished and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0 or (queued.ready is not None and queued.ready.query()):
                    break
                self._cond.wait(min(left, HANDOFF_POLL_S))
            taken = len(self._ready) >= finished
            # counted under the lock, where stats() reads them: a scrape never sees a wait half counted
            self._handoff_taken += taken
            self._handoff_missed += not taken
            self._handoff_s += time.perf_counter() - start

    def _iterate(self, jobs: list[Job]) -> None:
        """Admit `jobs` between steps, then run one decode step; errors fail the batch, not the engine."""
        try:
            with batched_wakeups():  # the step's streams are woken together, once per event loop
                self.scheduler.drop_cancelled()
                if jobs:
                    self.scheduler.admit(jobs)
                self.scheduler.step()
        except Exception as exc:  # noqa: BLE001 - keep serving the requests that come next
            log.exception("engine step failed")
            error = GenerationError(f"the engine failed while generating ({type(exc).__name__}: {exc}); the requests "
                                    "of this batch were stopped and the engine keeps serving")
            self.scheduler.fail_all(error)
            for job in jobs:
                if not job.handle.done:
                    finish_without_row(job.handle, "error", job=job, error=error)


def _stands_for(index: ClosestQuestion | None, query: str, earlier: str | None) -> str | None:
    if index is None:
        return None
    return index.find(query) if earlier is None else index.follow_up(query, earlier)
