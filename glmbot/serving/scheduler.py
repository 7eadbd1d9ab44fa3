"""Iteration-level batching: rows join between decode steps, leave when done, and free their slots.

The scheduler owns the KV slots and the batch rows. `admit` gives each ready request a free row,
copies its prefix KV into the row's first slots and queues its prompt for prefill; `step` takes at
most `prefill_token_budget` queued prompt tokens (oldest requests first, a long prompt split into
chunks over several steps, so that running streams wait for one bounded forward, not for every
new prompt) and runs ONE decode forward over all rows whose prompt is in, whatever adapter each
uses, samples a token per row and ends the rows that are done. While rows decode, the prompt
forwards are queued right after that decode forward and their first tokens chosen with its tokens:
the host never waits for a prompt. With static shapes, a prompt forward of up to ~1k tokens is
padded to a captured shape and replays a CUDA graph (kv_slots.GraphedPrefill). With
`prefill_with_decode` (the default), the prompt chunks ride in the decode forward itself (one pass
over the weights for both, see kv_slots.MixedSlots); with static shapes only where that step
replays a captured graph (kv_slots.GraphedMixed), else beside it. It is driven by one thread (the
engine's); nothing here takes locks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from glmbot.config import LOOP_PERIOD
from glmbot.errors import GenerationError
from glmbot.model.chat_format import ToolCall
from glmbot.model.family import GlmFamily
from glmbot.serving.answer_filters import AnswerFilterError, FilterChain
from glmbot.serving.kv_slots import (MIXED_GRAPH_TOKENS, DecodeOutputs, GraphedDecode, GraphedMixed, GraphedPrefill,
                                     KVSlots, MixedPart, Outputs, forward_mixed, forward_slots, idle_inputs, kv_buckets,
                                     prefill_shapes, round_up)
from glmbot.serving.prefix_cache import ResolvedAdapter
from glmbot.serving.prompts import ToolGate
from glmbot.serving.requests import (FinishReason, GenerationResult, RequestHandle, TextStream, Timings,
                                     Usage)
from glmbot.serving.router import RouteDecision
from glmbot.serving.sampling import SamplingParams, choose_tokens, choose_tokens_on_device, draw_uniforms

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A request ready for a row: tokenized, routed, its prefix KV loaded (or None: plain base)."""

    handle: RequestHandle
    prompt_ids: list[int]
    prefix: torch.Tensor | None  # (2L, G, P, D) on the serving device and dtype
    params: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    route: RouteDecision | None = None
    adapter: ResolvedAdapter | None = None
    # Plugins' after_generate, applied to the final text; while set, streaming holds the text back
    # (a rewrite cannot take back deltas already sent) and sends the rewritten answer at the end.
    rewrite: Callable[[str], str] | None = None
    # Plugins' answer filters (None: no plugin filters this request): each delta passes through them
    # as it is generated; they hold back only what a later delta could still change.
    filters: FilterChain | None = None
    # The request has tools (ChatGLM3/GLM-4): its stream goes through a ToolGate (a call is never shown
    # as text) and the reply is parsed into text + tool calls at the end.
    tools_family: GlmFamily | None = None
    # [generation] loop_stop: the answer ends once its last loop_stop tokens repeat one piece (0 = off)
    loop_stop: int = 0

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[2]


class Row:
    """A request being generated in batch row `slot`."""

    def __init__(self, slot: int, job: Job, decode: Callable[[Sequence[int]], str], segment_id: int | None = None):
        self.slot = slot
        self.job = job
        self.completion: list[int] = []  # eos excluded
        self.sampled = 0  # tokens sampled, eos included
        self.text = TextStream(decode, job.stop)
        self.generator = job.params.generator()
        self.admitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.prefilled = 0  # prompt tokens already in the row's KV slots (chunked prefill)
        self.admitted_step = 0  # the scheduler's decode step count when the row was admitted
        self.tools = ToolGate(job.tools_family, decode, segment_id) if job.tools_family is not None else None
        self._runs = [0] * LOOP_PERIOD  # per period p: how many last tokens equal the token p before them

    def looping(self, span: int) -> bool:
        """After a token is added: do the completion's last `span` tokens repeat one piece of 1 to
        LOOP_PERIOD tokens (一击一击一击...)? Kept up per token in O(LOOP_PERIOD)."""
        c = self.completion
        hit = False
        for p in range(1, LOOP_PERIOD + 1):
            if len(c) > p and c[-1 - p] == c[-1]:
                self._runs[p - 1] += 1
                hit = hit or self._runs[p - 1] + p >= span
            else:
                self._runs[p - 1] = 0
        return hit

    @property
    def decoding(self) -> bool:
        """The whole prompt is in the slots and its first token sampled: the row joins decode steps."""
        return self.prefilled >= len(self.job.prompt_ids)

    @property
    def seen(self) -> list[int]:
        return self.job.prompt_ids + self.completion

    def decode_inputs(self, ahead: int = 0) -> tuple[int, int, int, int]:
        """(token, position, write slot, slots visible) of this row's next decode query.

        ahead=1: the query of the step after, whose token is still on the device (pipelining);
        the token field is then a placeholder.
        """
        position = len(self.job.prompt_ids) + len(self.completion) - 1 + ahead
        write = self.job.prefix_len + position
        return (self.completion[-1] if not ahead else 0), position, write, write + 1


class DecodeProbe(Protocol):
    """Sees the logits of every token choice and may give the token instead (teacher forcing).

    Set `Scheduler.probe` to one (glmbot.serving.verify checks the decode path with it); left at
    None, the default, none of it runs. It is called on the engine thread, after the forward is
    queued and before the tokens reach the host.
    """

    def observe(self, rows: Sequence[Row], indices: Sequence[int], logits: torch.Tensor) -> Sequence[int | None]:
        """logits (B, V) choose completion token indices[i] (0: the first) of rows[i]; returns, per
        row, the token to take instead of the chosen one (None: keep it). The logits are the
        step's own copy: they stay valid after the next step."""


def choices(logits: torch.Tensor) -> DecodeOutputs:
    """logits (B, V) -> the logits, greedy tokens (B,) and whether each row is finite (B,)."""
    return logits, logits.argmax(dim=-1), torch.isfinite(logits).all(dim=-1)


Chunk = tuple["Row", int, int]  # a row and the [start, end) of its prompt tokens prefilled in one forward


@dataclass
class Launched:
    """A decode step queued on the device: its rows and their tokens, on the way to the host."""

    rows: list[Row]
    tokens: torch.Tensor  # (len(rows),) on the device
    host: torch.Tensor  # (2, len(rows)) tokens and finite flags, filled asynchronously
    ready: torch.cuda.Event | None  # recorded after the copy to `host` (None on CPU: already there)
    decoded: int  # rows[:decoded] decode; the rest (prompts prefilled in the step) take their first token


@dataclass
class SchedulerStats:
    decode_steps: int = 0
    decode_s: float = 0.0
    decode_tokens: int = 0  # row-steps that produced a token
    peak_rows: int = 0  # most rows decoded together in one step
    prefill_forwards: int = 0
    prefill_replays: int = 0  # prefill forwards replayed from a CUDA graph
    mixed_replays: int = 0  # decode steps with prompt chunks replayed from a CUDA graph
    mixed_steps: int = 0  # decode steps that prefilled prompt tokens in the same forward
    prefill_s: float = 0.0
    prefill_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class Scheduler:
    """Rows, slots and the two kinds of forward (prefill, decode) of the serving engine."""

    def __init__(self, model: torch.nn.Module, eos_token_id: int | Sequence[int], pad_token_id: int,
                 decode_text: Callable[[Sequence[int]], str], *, max_rows: int, slot_len: int,
                 static_shapes: bool = False, cuda_graph: bool = False, prefill_token_budget: int = 2048,
                 pipeline: bool | None = None, prefill_wait_steps: int = 0, prefill_with_decode: bool = True,
                 kv_length_buckets: bool = True, warm_up: bool | None = None, prefill_graphs: bool = True):
        cfg = model.config
        self.model = model
        # Generation ends at any of the family's stop ids (ChatGLM2: eos; ChatGLM3/GLM-4: eos, <|user|>, <|observation|>)
        self.stop_ids = frozenset([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)
        self.eos, self.pad = min(self.stop_ids), pad_token_id
        self.segment_id: int | None = None  # <|assistant|> of a roles family: a new reply segment (maybe a call)
        self.decode_text = decode_text
        self.device = model.device
        self.slots = KVSlots(cfg.num_layers, max_rows, cfg.kv_groups, cfg.kv_channels, slot_len, model.dtype,
                             self.device)
        self.rows: list[Row | None] = [None] * max_rows
        self.static_shapes = static_shapes or cuda_graph
        self.buckets = sorted({min(1 << i, max_rows) for i in range(max_rows.bit_length() + 1)})
        if prefill_token_budget <= 0:
            raise GenerationError(f"prefill_token_budget must be a positive number of tokens, got {prefill_token_budget}")
        self.prefill_token_budget = prefill_token_budget
        if prefill_wait_steps < 0:
            raise GenerationError(f"prefill_wait_steps must be >= 0, got {prefill_wait_steps}")
        self.prefill_wait_steps = prefill_wait_steps
        # Prompt chunks go through the decode step's forward while rows decode: one pass over the
        # weights for both, where a prefill forward of their own read them all once more (see step).
        self.prefill_with_decode = prefill_with_decode
        self.waiting: list[Row] = []  # admitted rows whose prompt is not all prefilled yet, oldest first
        self.stats = SchedulerStats()
        # Pipelining: queue decode step N+1 on step N's tokens while they are still on the device,
        # then do N's host work (text, stop strings, streaming) while the device runs N+1. A row that
        # ended at N just has its N+1 token dropped. On by default where the device runs
        # asynchronously (CUDA); on CPU it only reorders work (tests turn it on to check it).
        self.pipeline = self.device.type == "cuda" if pipeline is None else pipeline
        self.inflight: Launched | None = None
        self.blocked_s = 0.0  # the host's recent wait per step for the device's tokens (CUDA; see _collect)
        self.probe: DecodeProbe | None = None  # teacher forcing + logits capture (glmbot.serving.verify)
        # Static decode shapes read one of these KV lengths: the shortest that holds the step's rows
        self.kv_lengths = kv_buckets(self.slots.length) if kv_length_buckets else [self.slots.length]
        # Static shapes pad a prompt forward to one of these (rows, tokens, kv_len), when one holds it
        self.prefill_shapes = prefill_shapes(max_rows, self.kv_lengths) if self.static_shapes and prefill_graphs else []
        # ... and, with prefill_with_decode, a decode step of all rows takes one group of prompt
        # chunks padded to one of these (both parts read kv_len slots)
        self.mixed_shapes = [s for s in self.prefill_shapes if s[0] * s[1] <= MIXED_GRAPH_TOKENS] \
            if prefill_with_decode else []
        # Dynamic shapes mix prompts into decode steps eagerly on the CPU only: on CUDA an eager mixed
        # step costs more host time than its forward saves (docs/PERFORMANCE.md); prompts go beside it.
        self.eager_mix = prefill_with_decode and not self.static_shapes and self.device.type != "cuda"
        if self.device.type == "cuda" if warm_up is None else warm_up:
            self.warm_up_shapes()
        self.graphed = self.graphed_prefill = self.graphed_mixed = None
        if cuda_graph:
            if self.device.type != "cuda":
                raise GenerationError(f"cuda_graph needs the model on a CUDA device, it is on {self.device}")
            start = time.perf_counter()
            pool = torch.cuda.graph_pool_handle()  # one pool: the graphs are replayed one after another
            self.graphed = GraphedDecode(self._decode, self.buckets, self.kv_lengths, self.slots.scratch, self.device,
                                         pool)
            if self.prefill_shapes:
                self.graphed_prefill = GraphedPrefill(self._prefill_forward, self.prefill_shapes, self.pad,
                                                      self.slots.scratch, self.device, pool)
            if self.mixed_shapes:
                self.graphed_mixed = GraphedMixed(self._mixed_forward, self.mixed_shapes, self.buckets[-1], self.pad,
                                                  self.slots.scratch, self.device, pool)
            log.info("CUDA graphs: %d decode steps, %d prompt forwards, %d decode steps with prompts, captured in "
                     "%.1f s", len(self.graphed.graphs), len(self.prefill_shapes), len(self.mixed_shapes),
                     time.perf_counter() - start)

    def warm_up_shapes(self) -> None:
        """Run each kind of forward the steps will run, each at two sizes, before any request:
        decode queries (n, 1), one prompt chunk (1, T), several (B, T), and, with prefill_with_decode,
        chunks inside a decode step (one flat (1, M) axis). torch.compile'd dense parts compile once
        per kind (sizes 0 and 1 are specialised) and once more when a second size turns it dynamic:
        without this the first requests of each kind waited for those compiles, seconds on the GPU.
        Every write goes to the scratch slot; nothing is left behind."""
        rows = len(self.rows)

        def part(batch: int, length: int, decode: bool = False) -> MixedPart:
            batch = min(batch, rows)
            idle = idle_inputs(batch, length, self.pad, self.slots.scratch, self.device)
            slot_rows = None if decode else torch.arange(batch, device=self.device)
            return (*idle, slot_rows, min(round_up(length), self.slots.length))

        with torch.no_grad():
            for batch, length in ((1, 1), (2, 1), (3, 1), (1, 2), (1, 3), (2, 3), (3, 5)):
                ids, positions, write, limit, slot_rows, kv_len = part(batch, length, decode=length == 1)
                forward_slots(self.model, self.slots, ids, positions, write, limit, kv_len, rows=slot_rows)
            mixes = self.mixed_shapes or self.eager_mix
            for decoding, chunk in ((1, 3), (2, 4)) if mixes else ():  # (1, 4), (1, 6) tokens
                forward_mixed(self.model, self.slots, [part(decoding, 1, decode=True), part(1, chunk)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def active(self) -> list[Row]:
        return [r for r in self.rows if r is not None]

    @property
    def decoding(self) -> list[Row]:
        return [r for r in self.rows if r is not None and r.decoding]

    @property
    def free_rows(self) -> int:
        return self.rows.count(None)

    # ---- admission and prefill ------------------------------------------------------------------

    def admit(self, jobs: Sequence[Job]) -> None:
        """Give each job a free row, copy its prefix in and queue its prompt for prefill."""
        for job in jobs:
            if job.handle.cancelled:
                finish_without_row(job.handle, "cancelled", job=job)
                continue
            need = job.prefix_len + len(job.prompt_ids) + job.max_new_tokens - 1  # the last token is never fed back
            if need > self.slots.length:
                finish_without_row(job.handle, "error", job=job, error=GenerationError(
                    f"request needs {need} KV slots (prefix {job.prefix_len} + prompt {len(job.prompt_ids)} + "
                    f"{job.max_new_tokens} new tokens - 1) but rows have {self.slots.length}"))
                continue
            slot = self.rows.index(None)  # the lowest free row keeps the decode batch compact
            self.slots.reset_row(slot, job.prefix)
            self.rows[slot] = row = Row(slot, job, self.decode_text, self.segment_id)
            row.admitted_step = self.stats.decode_steps
            self.waiting.append(row)

    def prefill_due(self) -> bool:
        """Whether the waiting prompts go in before this decode step. With prefill_wait_steps, prompts
        that arrive one by one while streams decode wait a few steps, so that one forward takes them
        together (each forward has a fixed cost: a pass over every layer's weights), unless nothing
        decodes, a prompt is half in, they are a quarter of the decoding rows or a full budget, the
        oldest has waited prefill_wait_steps steps, or a captured decode step can take the oldest in
        (mixed shapes: a 64-token prompt adds 1.24 ms to that step on an H100, two together 0.9 ms
        each; waiting for company would save ~0.3 ms a prompt but delay its first token by whole
        5.6 ms steps)."""
        if not self.waiting or self.prefill_wait_steps <= 0:
            return bool(self.waiting)
        decoding = len(self.decoding)
        waiting = [r for r in self.waiting if self.rows[r.slot] is r]
        if not decoding or not waiting or 4 * len(waiting) >= decoding or any(r.prefilled for r in waiting):
            return True
        if self.mixed_shapes and self._ride_now():
            oldest = waiting[0]
            chunk = (oldest, 0, min(len(oldest.job.prompt_ids), self.prefill_token_budget))
            if self._mixed_shape(self.decoding, [chunk]) is not None:
                return True
        if sum(len(r.job.prompt_ids) for r in waiting) >= self.prefill_token_budget:
            return True
        return self.stats.decode_steps - waiting[0].admitted_step >= self.prefill_wait_steps

    def prefill(self) -> None:
        """Prefill up to `prefill_token_budget` prompt tokens of the waiting rows, oldest first; a
        row whose last chunk goes in samples its first token and joins the decode steps."""
        chunks = self._take_chunks()
        for group in self._prefill_groups(chunks):
            try:
                self._prefill(group)
            except Exception as exc:  # noqa: BLE001 - one group's failure must not stop the engine
                log.exception("prefill of %d request(s) failed", len(group))
                for row, _, _ in group:
                    if self.rows[row.slot] is row:
                        self._finish(row, "error", GenerationError(f"prefill failed: {type(exc).__name__}: {exc}"))
        self.waiting = [r for r in self.waiting if self.rows[r.slot] is r and not r.decoding]

    def _take_chunks(self, into_graph: bool = False) -> list[Chunk]:
        """The next `prefill_token_budget` prompt tokens of the waiting rows, oldest rows first.

        into_graph: for a decode step that takes them into its captured graph, only as long as,
        padded together, a captured prompt shape holds them (the rest wait for the next step); if
        the first chunk alone fits none, the budget as usual (they get forwards of their own)."""
        self.waiting = [r for r in self.waiting if self.rows[r.slot] is r]  # finished (cancelled) meanwhile
        budget, chunks = self.prefill_token_budget, []
        decoding = self.decoding if into_graph else []
        for row in self.waiting:
            if budget <= 0:
                break
            n = min(len(row.job.prompt_ids) - row.prefilled, budget)
            chunk = (row, row.prefilled, row.prefilled + n)
            if into_graph and self._mixed_shape(decoding, [*chunks, chunk]) is None:
                return chunks or self._take_chunks()
            chunks.append(chunk)
            budget -= n
        return chunks

    def _prefill_groups(self, chunks: list[Chunk]) -> list[list[Chunk]]:
        """Chunks of similar length together, each group's padded forward within the token budget."""
        groups: list[list[Chunk]] = []
        for chunk in sorted(chunks, key=lambda c: c[2] - c[1]):
            longest = chunk[2] - chunk[1]  # sorted: the newest is the longest of its group
            if groups and (len(groups[-1]) + 1) * longest <= self.prefill_token_budget:
                groups[-1].append(chunk)
            else:
                groups.append([chunk])
        return groups

    def _prefill(self, chunks: list[Chunk]) -> None:
        """One forward over prompt tokens [start, end) of each chunk's row; rows whose prompt ends
        here sample their first token from its logits."""
        start_time = time.perf_counter()
        logits = self._prefill_logits(chunks)
        for row, _, end in chunks:
            row.prefilled = end
        last = [i for i, (row, _, end) in enumerate(chunks) if end == len(row.job.prompt_ids)]
        if last:
            self._sample_and_advance([chunks[i][0] for i in last], logits[last] if len(last) < len(chunks) else logits)
        self.stats.prefill_s += time.perf_counter() - start_time

    def _prefill_logits(self, chunks: list[Chunk]) -> torch.Tensor:
        """Queue one prompt forward of a group's chunks (a graph replay where a captured shape holds
        it) -> the logits of each chunk's last token (len(chunks), V)."""
        table, kv_len, slots = self._prefill_inputs(chunks, padded=True)
        shape = (*table.shape[1:], kv_len)
        if self.graphed_prefill is not None and shape in self.graphed_prefill.graphs:
            logits = self.graphed_prefill(shape, *table, slots)[0][:len(chunks)].clone()  # the next replay reuses it
            self.stats.prefill_replays += 1
        else:
            logits = self._prefill_forward(*table, slots, kv_len)[0][:len(chunks)]
        self.stats.prefill_forwards += 1
        self.stats.prefill_tokens += sum(end - start for _, start, end in chunks)
        return logits

    def _prefill_inputs(self, chunks: list[Chunk], padded: bool = False,
                        shape: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
        """A group's chunks as one left-padded (B, T) batch -> table (4, B, T) on the device, kv_len
        and the rows' slot rows (B,).

        padded: B, T and kv_len grow to the captured prompt shape that holds them, if any (see
        `_prefill_shape`; static shapes only), or to `shape`: more left padding, and idle rows after
        the real ones (slot row 0, writing its scratch slot only, seeing slot 0)."""
        width = max(end - start for _, start, end in chunks)
        kv_len = round_up(max(end + row.job.prefix_len for row, _, end in chunks))
        batch = len(chunks)
        if padded and shape is None:
            shape = self._prefill_shape(batch, width, kv_len)
        if shape is not None:
            batch, width, kv_len = shape
        # Left-padded so every row's last token of the chunk is the last query: (4, B, T) =
        # token ids, positions, write slots (scratch for padding), slots visible (1 for padding).
        table = torch.zeros(4, batch, width, dtype=torch.long)
        table[0] = self.pad
        table[2] = self.slots.scratch
        table[3] = 1
        for i, (row, start, end) in enumerate(chunks):
            n, p = end - start, row.job.prefix_len
            j = torch.arange(start, end)
            table[0, i, width - n:] = torch.tensor(row.job.prompt_ids[start:end])
            table[1, i, width - n:] = j
            table[2, i, width - n:] = p + j
            table[3, i, width - n:] = p + j + 1
        slot_rows = [row.slot for row, _, _ in chunks] + [0] * (batch - len(chunks))
        return self._to_device(table), kv_len, self._to_device(torch.tensor(slot_rows))

    def _prefill_shape(self, batch: int, width: int, kv_len: int) -> tuple[int, int, int] | None:
        """The prompt shape (rows, tokens, kv_len) with the fewest padded tokens that holds a forward of
        `batch` rows of `width` tokens reading `kv_len` slots (None: none does, it runs as it is). With
        CUDA graphs each such shape is a captured graph; without, static shapes still pad to them."""
        fits = [s for s in self.prefill_shapes if s[0] >= batch and s[1] >= width and s[2] >= kv_len]
        return min(fits, key=lambda s: (s[0] * s[1], s[2]), default=None)

    def _prefill_forward(self, ids: torch.Tensor, positions: torch.Tensor, write: torch.Tensor, limit: torch.Tensor,
                         slot_rows: torch.Tensor, kv_len: int) -> Outputs:
        """One prompt forward of (B, T) queries into slot rows (B,) -> (logits of each row's last query,)."""
        return (forward_slots(self.model, self.slots, ids, positions, write, limit, kv_len, rows=slot_rows),)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without waiting for the device's queued work (pinned, async)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    # ---- decode ---------------------------------------------------------------------------------

    def step(self) -> None:
        """Prefill what the budget allows, then one decode forward over every row whose prompt is
        in (rows 0..n-1; idle ones and those still prefilling write to scratch). While rows decode,
        the prompt chunks are queued with the decode step (see `_ride_now`): their forwards right
        after its forward, or, with `prefill_with_decode`, inside it; the rows whose prompt ends
        there get their first token with the decode rows' tokens, so no prompt makes the host wait.

        Pipelined, the forward of the next step is queued before this step's tokens are read.
        """
        chunks: list[Chunk] = []
        if self.prefill_due():
            if self._ride_now():
                chunks = self._take_chunks(into_graph=bool(self.mixed_shapes))
            else:
                self.prefill()
        start = time.perf_counter()
        current, self.inflight = self.inflight, None
        if current is None:
            rows = self.decoding
            if not rows:
                return
            current = self._launch_mixed(rows, None, chunks) if chunks else self._launch(rows, None)
            chunks = []
            if current is None:
                return
        if chunks:
            self.inflight = self._launch_mixed(self.decoding, current, chunks)
        elif self.pipeline and self._can_run_ahead():
            self.inflight = self._launch(self.decoding, current)
        self._collect(current)
        self.stats.decode_s += time.perf_counter() - start

    def _ride_now(self) -> bool:
        """Whether this step's prompt chunks are queued with its decode step: only while rows decode
        (else a prefill forward alone is the same work), and, with a step in flight, only if the
        next one may be queued on it (else the first tokens would make the host wait anyway)."""
        if not self.decoding:
            return False
        return self.inflight is None or (self.pipeline and self._can_run_ahead())

    def _launch_mixed(self, rows: list[Row], previous: Launched | None, chunks: list[Chunk]) -> Launched | None:
        """`_launch` with prompt chunks; if their forwards fail, the chunks' requests fail alone and
        the decode step runs without them."""
        try:
            return self._launch(rows, previous, chunks)
        except Exception as exc:  # noqa: BLE001 - one prompt's failure must not stop the running streams
            log.exception("prefill of %d request(s) within a decode step failed", len(chunks))
            for row, _, _ in chunks:
                if self.rows[row.slot] is row:
                    self._finish(row, "error", GenerationError(f"prefill failed: {type(exc).__name__}: {exc}"))
            self.waiting = [r for r in self.waiting if self.rows[r.slot] is r]
            return self._launch(self.decoding, previous)

    def _can_run_ahead(self) -> bool:
        """Some row will likely still run after the current step, and no row's token choice needs
        the previous token on the host (the repetition penalty reads the row's seen tokens)."""
        rows = self.decoding
        return (any(r.sampled + 1 < r.job.max_new_tokens for r in rows)
                and all(r.job.params.repetition_penalty == 1.0 for r in rows))

    def _launch(self, rows: list[Row], previous: Launched | None, chunks: Sequence[Chunk] = ()) -> Launched | None:
        """Queue the decode forward of `rows` and the choice of their tokens; no host sync.

        previous: the step still in flight; its rows (those still alive) feed it their token from
        the device and query one position further; other rows (new ones) use their last token.
        chunks: prompt tokens to prefill with this step: with prefill_with_decode, in the decode
        forward itself (see MixedSlots; with static shapes only as a captured step, see
        `_mixed_shape`), else in forwards of their own queued after it (graph replays where their
        shapes were captured). Rows whose prompt ends there get their first token from them, chosen
        with the decode rows'.
        """
        # With static shapes the prompt chunks go inside the decode forward only where that step,
        # padded to all rows and a captured prompt shape, replays a graph (all chunks as one group,
        # padded); else beside it (see also eager_mix).
        shape = self._mixed_shape(rows, list(chunks)) if chunks else None
        groups = [list(chunks)] if shape is not None else self._prefill_groups(list(chunks)) if chunks else []
        mixed = bool(chunks) and (shape is not None or self.eager_mix)
        hi = max((r.slot for r in rows), default=-1) + 1
        if shape is not None:
            n = self.buckets[-1]
        else:
            n = next(b for b in self.buckets if b >= hi) if self.static_shapes and not mixed else hi
        # (5, n): token, position, write slot, slots visible, index of the token in `previous` (-1:
        # the token given here). Idle rows write to scratch and see slot 0.
        columns = [(0, 0, self.slots.scratch, 1, -1)] * n
        ahead = {id(r): i for i, r in enumerate(previous.rows)} if previous is not None else {}
        launched = []
        for row in rows:
            i = ahead.get(id(row), -1)
            if i >= 0 and row.sampled + 1 >= row.job.max_new_tokens:
                continue  # the step in flight gives this row its last token
            columns[row.slot] = (*row.decode_inputs(ahead=1 if i >= 0 else 0), i)
            launched.append(row)
        if not launched and not chunks:
            return None
        parts: list[MixedPart] = []
        if launched or shape is not None:
            table = self._to_device(torch.tensor(columns, dtype=torch.long).T.contiguous())
            ids = table[0]
            if previous is not None and ahead:
                ids = torch.where(table[4] >= 0, previous.tokens[table[4].clamp(min=0)], ids)
            parts.append((ids[:, None], table[1, :, None], table[2, :, None], table[3, :, None], None,
                          round_up(max(c[3] for c in columns))))
        slot_of = [r.slot for r in launched]
        decoded = len(launched)
        if chunks:
            # The decode part (if any) keeps its rows 0..n-1 first; each group of chunks follows.
            offset = n if parts else 0
            for group in groups:
                for i, (row, _, end) in enumerate(group):
                    if end == len(row.job.prompt_ids):  # its first token is chosen from this step
                        launched.append(row)
                        slot_of.append(offset + i)
                offset += len(group)
            if shape is not None:  # one group, padded to a captured shape
                table, _, slots = self._prefill_inputs(groups[0], shape=shape)
                inputs = (*parts[0][:4], *table, slots)
                if self.graphed_mixed is not None:
                    logits, greedy, finite = self.graphed_mixed(shape, *inputs)
                    self.stats.mixed_replays += 1
                else:
                    logits, greedy, finite = self._mixed_forward(*inputs, shape[2])
            elif mixed:
                for group in groups:
                    table, kv_len, slots = self._prefill_inputs(group)
                    parts.append((table[0], table[1], table[2], table[3], slots, kv_len))
                logits, greedy, finite = choices(forward_mixed(self.model, self.slots, parts))
            else:  # the decode part's outputs (greedy tokens chosen in its graph), then the prompts'
                outputs = [self._decode_part(parts[0])] if parts else []
                outputs.append(choices(torch.cat([self._prefill_logits(group) for group in groups])))
                logits, greedy, finite = (torch.cat(column) for column in zip(*outputs))
            if mixed:
                self.stats.prefill_tokens += sum(end - start for _, start, end in chunks)
                self.stats.mixed_steps += 1
            for row, _, end in chunks:
                row.prefilled = end
            self.waiting = [r for r in self.waiting if not r.decoding]
        else:
            logits, greedy, finite = self._decode_part(parts[0])
        index = self._to_device(torch.tensor(slot_of))
        params = [r.job.params for r in launched]
        if all(p.greedy and p.repetition_penalty == 1.0 for p in params):
            # The step already chose them (inside the CUDA graph when there is one): no (B, V) work here.
            tokens, finite = greedy[index], finite[index]
        else:
            seen = [r.seen if r.job.params.repetition_penalty != 1.0 else () for r in launched]
            tokens, finite = choose_tokens_on_device(logits[index], params, seen,
                                                     draw_uniforms(params, [r.generator for r in launched]))
        if self.probe is not None:
            # A row in `previous` gets its next token from that step: this one chooses the token after.
            indices = [r.sampled + (ahead.get(id(r), -1) >= 0) for r in launched]
            given = self.probe.observe(launched, indices, logits[index])  # indexing copies: the graph reuses logits
            tokens = torch.where(torch.tensor([g is None for g in given], device=self.device), tokens,
                                 torch.tensor([g or 0 for g in given], device=self.device))
        both = torch.stack((tokens, finite.long()))
        if self.device.type != "cuda":
            return Launched(launched, tokens, both, None, decoded)
        host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
        host.copy_(both, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return Launched(launched, tokens, host, ready, decoded)

    def _mixed_shape(self, rows: list[Row], group: list[Chunk]) -> tuple[int, int, int] | None:
        """The captured prompt shape (rows', tokens, kv_len) that holds all chunks of a step, padded
        as one group, and every decode row's slots (None: no shape does; the chunks go in forwards
        of their own)."""
        if not self.mixed_shapes:
            return None
        reach = max([end + row.job.prefix_len for row, _, end in group]
                    + [r.job.prefix_len + len(r.seen) + 1 for r in rows])  # +1: a row a step ahead
        width = max(end - start for _, start, end in group)
        fits = [s for s in self.mixed_shapes if s[0] >= len(group) and s[1] >= width and s[2] >= reach]
        return min(fits, key=lambda s: (s[0] * s[1], s[2]), default=None)

    def _mixed_forward(self, *inputs: torch.Tensor) -> DecodeOutputs:
        """A decode step of (n, 1) queries (ids, positions, write slots, limits) with one group of
        prompt chunks (the same four, (B', T'), and their slot rows (B',)) in its forward, both
        parts reading kv_len slots -> logits, greedy tokens, finite flags of the n + B' last queries."""
        *tensors, kv_len = inputs
        decode, prompts, slot_rows = tensors[:4], tensors[4:8], tensors[8]
        return choices(forward_mixed(self.model, self.slots, [(*decode, None, kv_len), (*prompts, slot_rows, kv_len)]))

    def _decode_part(self, part: MixedPart) -> DecodeOutputs:
        """The decode forward of a launch's (n, 1) part: its graph's replay, or an eager forward."""
        if self.graphed is not None:
            return self.graphed(*part[:4], reach=part[5])
        kv_len = next(k for k in self.kv_lengths if k >= part[5]) if self.static_shapes else part[5]
        return self._decode(*part[:4], kv_len)

    def _collect(self, launched: Launched) -> None:
        """Wait for a launched step's tokens and advance its rows that are still alive."""
        if launched.ready is not None:
            blocked = time.perf_counter()
            launched.ready.synchronize()
            # how long the host sat waiting for the device (smoothed): time it could spend without delaying it
            self.blocked_s += 0.2 * (time.perf_counter() - blocked - self.blocked_s)
        tokens, finite = launched.host.tolist()
        now = time.perf_counter()
        alive = 0
        for i, (row, token, ok) in enumerate(zip(launched.rows, tokens, finite)):
            if self.rows[row.slot] is row:  # not cancelled, failed or finished meanwhile
                alive += i < launched.decoded  # a first token comes from the prompt: prefill, not decode
                self._advance(row, token, bool(ok), now)
        if alive:  # a step run ahead for rows that had all ended gave nothing: not counted
            self.stats.decode_steps += 1
            self.stats.decode_tokens += alive
            self.stats.peak_rows = max(self.stats.peak_rows, alive)

    def _decode(self, ids, positions, write, limit, kv_len: int) -> DecodeOutputs:  # noqa: ANN001 - (n, 1) each
        """One decode forward of (n, 1) queries -> logits (n, V), greedy tokens (n,), finite rows (n,).

        Greedy tokens are chosen here so that, in a CUDA graph, the common all-greedy step needs no
        (n, V) work outside it (`choose_tokens_on_device` picks the same tokens from the logits).
        """
        return choices(forward_slots(self.model, self.slots, ids, positions, write, limit, kv_len))

    # ---- tokens, text and endings ---------------------------------------------------------------

    def _sample_and_advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        """logits (B, V) of `rows` -> one token each; rows that are done leave the batch."""
        params = [r.job.params for r in rows]
        seen = [r.seen if r.job.params.repetition_penalty != 1.0 else () for r in rows]
        tokens, finite = choose_tokens(logits, params, seen, [r.generator for r in rows])
        if self.probe is not None:
            given = self.probe.observe(rows, [r.sampled for r in rows], logits)
            tokens = [t if g is None else g for t, g in zip(tokens, given)]
        now = time.perf_counter()
        for row, token, ok in zip(rows, tokens, finite):
            self._advance(row, token, ok, now)

    def _advance(self, row: Row, token: int, finite: bool, now: float) -> None:
        job = row.job
        if not finite:
            who = job.adapter.ref if job.adapter is not None else "the plain base model"
            self._finish(row, "error", GenerationError(
                f"request {job.handle.id} ({who}) stopped: the model produced NaN/Inf logits at completion token "
                f"{row.sampled + 1}; other requests were not affected. A prefix holding NaN/Inf values (check it "
                "with: glmbot adapters verify) or an overflowing dtype (try float32 or bfloat16) causes this"))
            return
        row.sampled += 1
        row.first_token_at = row.first_token_at or now
        if token in self.stop_ids and not job.ignore_eos:
            self._finish(row, "stop")
            return
        row.completion.append(token)
        delta = row.text.push(token)
        if job.filters is not None:
            try:
                delta = job.filters.push(delta)
            except AnswerFilterError as exc:
                self._finish(row, "error", exc)
                return
        if row.tools is not None:
            delta = row.tools.push(token, row.completion, delta)
        if job.rewrite is None:
            job.handle._push(delta)
        looping = job.loop_stop > 0 and row.looping(job.loop_stop)
        if row.text.stopped and (row.tools is None or row.tools.state == "open"):
            # With tools, stop strings cut a text answer only: a call (or a first line that may
            # still become one) runs to its own stop id, so its arguments are never cut short.
            self._finish(row, "stop")
        elif looping and (row.tools is None or row.tools.state == "open"):
            self._finish(row, "loop")  # greedy decoding never leaves a loop: the rest would repeat it
        elif row.sampled >= job.max_new_tokens:
            # a text cut by a stop string while its first line was still held (the tool gate's
            # "wait") ran on in case it became a call: it was stopped, not cut by the length
            cut = row.text.stopped and row.tools is not None and row.tools.state == "wait"
            self._finish(row, "stop" if cut else "length")
        elif job.handle.cancelled:
            self._finish(row, "cancelled")

    def drop_cancelled(self) -> None:
        for row in self.active:
            if row.job.handle.cancelled:
                self._finish(row, "cancelled")

    def fail_all(self, error: BaseException) -> None:
        self.inflight = None
        self.waiting = []
        for row in self.active:
            self._finish(row, "error", error)

    def _finish(self, row: Row, reason: FinishReason, error: BaseException | None = None) -> None:
        self.rows[row.slot] = None
        job = row.job
        text = row.text.text if job.filters is None else job.filters.text  # what the client got
        calls: tuple[ToolCall, ...] = ()
        if error is None:
            try:
                text, calls = self._send_rest(row)
            except Exception as exc:  # noqa: BLE001 - a filter or a reply parser failed: this request alone ends
                error = exc
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        finish_without_row(job.handle, reason, job=job, error=error, text=text, sampled=row.sampled,
                           completion=row.completion, admitted_at=row.admitted_at, first_token_at=row.first_token_at,
                           tool_calls=calls)

    def _send_rest(self, row: Row) -> tuple[str, tuple[ToolCall, ...]]:
        """Push what the stream still holds (all of it when held back: rewritten under after_generate,
        parsed when the request has tools); returns the answer and its tool calls."""
        job = row.job
        tail = row.text.finish()
        text = row.text.text
        if job.filters is not None:
            tail = job.filters.finish(tail)
            text = job.filters.text
        calls: tuple[ToolCall, ...] = ()
        if row.tools is not None:
            text, calls, tail = row.tools.finish(row.completion, text)
        if job.rewrite is not None:
            tail = text = job.rewrite(text)
        job.handle._push(tail)
        return text, calls


def finish_without_row(handle: RequestHandle, reason: FinishReason, *, job: Job | None = None,
                       error: BaseException | None = None, text: str = "", sampled: int = 0,
                       completion: Sequence[int] = (), admitted_at: float | None = None,
                       first_token_at: float | None = None, route: RouteDecision | None = None,
                       prompt_tokens: int = 0, tool_calls: Sequence[ToolCall] = ()) -> None:
    """Complete a handle with its result (or error), whether or not it ever had a row."""
    now, t0 = time.perf_counter(), handle.submitted_at
    adapter = job.adapter if job is not None else None
    result = GenerationResult(
        text=text, finish_reason="error" if error is not None else reason,
        usage=Usage(len(job.prompt_ids) if job is not None else prompt_tokens, sampled),
        route=job.route if job is not None else route,
        adapter=adapter.ref if adapter is not None else None,
        adapter_version=adapter.version if adapter is not None else None,
        timings=Timings((admitted_at or now) - t0, None if first_token_at is None else first_token_at - t0, now - t0),
        token_ids=tuple(completion), tool_calls=tuple(tool_calls))
    handle._finish(result, error)
