"""Per-row KV slots of the serving engine, and the one forward that reads and writes them.

Each batch row owns, in every layer, a line of key/value slots. Row r holds its adapter's
prefix KV in slots [0, P_r) (copied as-is at admission: prefix keys are never rotated and take
no positions), then its real tokens: token i (position i) lives in slot P_r + i. So the keys a
query may see are always one contiguous range [0, limit), and the additive mask of any mix of
adapters, prefix lengths and plain-base rows (P_r = 0) is just `slot < limit` per query.

Writes of padding queries and idle rows go to one scratch slot past the last readable one, so
they never touch live slots and shapes can stay static (CUDA graphs, see `GraphedDecode`).
"""

from __future__ import annotations

from typing import Callable

import torch

from glmbot.model import kernels

SLOT_ALIGN = 16  # KV lengths are padded to a multiple of this (kernels and CUDA graphs like it)

# Which forwards over the slots run their attention as one `kernels.slot_attention` call a layer (on
# CUDA with Triton, half precision, grouped decode): "all" (the default) every forward; "mixed" only
# decode steps with prompts inside, whose parts otherwise each gather their rows' slots and attend
# with a mask of their own; "off" none. On an H100 a step of 64 decode rows with a 64-token prompt
# inside was 0.7 ms (10%) faster and a plain 64-row decode step 1% faster (docs/PERFORMANCE.md, "One
# Triton kernel for all parts' attention"). `set_slot_attention` changes it (benches: --slot-attention).
SLOT_ATTENTION_MODES = ("mixed", "all", "off")
DEFAULT_SLOT_ATTENTION = "all"
_slot_attention = DEFAULT_SLOT_ATTENTION
# The kernel reads a query's keys once per query (one program per query and KV group): a prompt
# re-reads its row's slots once per token. Up to this many prompt tokens x slots (128 tokens over
# 1,024 slots), the measured range, that costs less than the per-part path's gather, mask and extra
# call; forwards with more prompt reads keep the per-part path (flash or cuDNN tiles) in every mode.
FUSED_PROMPT_READS = 128 * 1024


def set_slot_attention(mode: str) -> None:
    """See SLOT_ATTENTION_MODES; forwards captured in CUDA graphs keep the mode they were captured with."""
    global _slot_attention
    if mode not in SLOT_ATTENTION_MODES:
        raise ValueError(f"slot attention mode {mode!r}: use one of {', '.join(SLOT_ATTENTION_MODES)}")
    _slot_attention = mode


def fused_attention_ok(model: torch.nn.Module, slots: KVSlots, mixed: bool, prompt_reads: int = 0) -> bool:
    """Whether a forward over `slots` (a mixed one or not; its prompt tokens x slots read) takes
    `kernels.slot_attention`: as `_slot_attention` says, for prompts of up to FUSED_PROMPT_READS,
    where its Triton kernel takes the model's shapes on CUDA, with grouped decode attention
    (`[serving] deterministic = false`, the CUDA default)."""
    if _slot_attention == "off" or (_slot_attention == "mixed" and not mixed) or prompt_reads > FUSED_PROMPT_READS:
        return False
    attention = model.transformer.encoder.layers[0].self_attention
    kv = slots.kv
    return (kv.is_cuda and attention.grouped_decode
            and kernels.slot_attention_supported(attention.num_heads, attention.groups, attention.head_dim, kv.dtype))


def round_up(n: int, multiple: int = SLOT_ALIGN) -> int:
    return -(-n // multiple) * multiple


class KVSlots:
    """Key and value slots of every layer in one buffer (L, R, 2, G, S + 1, D); slot S is scratch.

    Keys and values of a layer are interleaved per row ([.., 0] keys, [.., 1] values), so one
    scatter writes both for a step. `keys` and `values` are (L, R, G, S + 1, D) views.
    """

    def __init__(self, num_layers: int, rows: int, groups: int, head_dim: int, slots: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.rows = rows
        self.length = round_up(slots)  # readable slots per row
        self.scratch = self.length
        # Zeros, never torch.empty: a masked slot still enters q @ k^T, and NaN garbage there would
        # turn a whole row's attention into NaN despite the -inf-like mask.
        self.kv = torch.zeros((num_layers, rows, 2, groups, self.length + 1, head_dim), dtype=dtype, device=device)
        self.keys, self.values = self.kv[:, :, 0], self.kv[:, :, 1]  # (L, R, G, S+1, D) each

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def reset_row(self, row: int, prefix: torch.Tensor | None) -> None:
        """Clear a row's slots (a failed request may have left NaN there) and copy in its prefix.

        prefix: (2L, G, P, D), slot 2l = layer l's key and 2l + 1 its value, as PrefixEncoder.kv().
        """
        self.kv[:, row].zero_()
        if prefix is not None:
            p = prefix.shape[2]
            self.keys[:, row, :, :p] = prefix[0::2]  # (L, G, P, D)
            self.values[:, row, :, :p] = prefix[1::2]


class SlotCache:
    """The `cache` object the model writes through (`update_kv(kv, layer) -> (k_all, v_all)`).

    rows: (B,) slot rows of the batch, or None for rows 0..B-1 (decode: a view, no copy).
    write_pos: (B, T) slot of each query's new key/value (scratch for padding and idle rows).
    kv_len: how many slots attention reads, a multiple of SLOT_ALIGN.
    """

    def __init__(self, slots: KVSlots, rows: torch.Tensor | None, write_pos: torch.Tensor, kv_len: int,
                 limits: torch.Tensor | None = None):
        self.slots = slots
        # each query's key count (B * T,): given, attention is one kernels.slot_attention call (`fused`)
        self.limits = None if limits is None else limits.reshape(-1).contiguous()
        self.owns_masks = limits is not None  # the model builds no mask: `limits` rule each query's keys
        self.rows = rows
        self.write_pos = write_pos
        self.kv_len = kv_len
        batch = write_pos.shape[0]
        index = rows if rows is not None else torch.arange(batch, device=write_pos.device)
        self.row_index = index[:, None]  # (B, 1), broadcast against write_pos (B, T)
        # Each query's slot row and slot, contiguous as the Triton kernel needs (else its torch fallback
        # runs): one row's (1, T) expansion flattens to a stride-0 view.
        self.flat_rows = self.row_index.expand_as(write_pos).reshape(-1).contiguous()
        self.flat_pos = write_pos.reshape(-1).contiguous()

    def write_new(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer_idx: int, heads: int,
                  groups: int) -> torch.Tensor:
        """The new queries' projections qkv (..., (H + 2G) D) and full-width rotary tables (..., 1, D)
        -> rotated queries (..., H, D); their rotated keys and values go to their slots, in one kernel
        on CUDA (kernels.rotary_to_slots), so `update_kv` then gets kv=None."""
        d = cos.shape[-1]
        lead = qkv.shape[:-1]
        q = kernels.rotary_to_slots(qkv.reshape(-1, qkv.shape[-1]), cos.expand(*lead, 1, d).reshape(-1, d),
                                    sin.expand(*lead, 1, d).reshape(-1, d), self.slots.kv[layer_idx], self.flat_rows,
                                    self.flat_pos, heads, groups)
        return q.view(*lead, heads, d)

    def update_kv(self, kv: torch.Tensor | None, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """kv: (B, T, 2, G, D) keys (after rotary) and values of the new queries, written in one
        scatter (None: `write_new` wrote them) -> all readable key and value slots of these rows,
        each (B, G, kv_len, D)."""
        if kv is not None:
            # Advanced indices around slices put the indexed dims first: the target is (B, T, 2, G, D).
            self.slots.kv[layer_idx][self.row_index, :, :, self.write_pos] = kv
        return self.read_kv(layer_idx)

    def fused(self, q: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Rotated queries q (..., H, D), their keys and values already in the slots -> attention
        output (N, H, D), each query over its row's slots [0, limit), in one kernel."""
        return kernels.slot_attention(q.reshape(-1, *q.shape[-2:]), self.slots.kv[layer_idx], self.flat_rows,
                                      self.limits)

    def read_kv(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All readable key and value slots of these rows, each (B, G, kv_len, D)."""
        readable = self.slots.kv[layer_idx][..., :self.kv_len, :]  # a view: the gather below copies only the slots read
        rows = readable[:self.write_pos.shape[0]] if self.rows is None else readable[self.rows]
        return rows[:, 0], rows[:, 1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # The model only uses this to derive positions and masks, which the engine passes itself.
        return 0


def slot_mask(limit: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """limit (B, T): each query sees slots [0, limit) -> additive mask (B, 1, T, kv_len), 0 / finfo.min."""
    visible = torch.arange(kv_len, device=limit.device) < limit[..., None]  # (B, T, kv_len)
    mask = torch.zeros(visible.shape, dtype=dtype, device=limit.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


def forward_slots(model: torch.nn.Module, slots: KVSlots, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  write_pos: torch.Tensor, limit: torch.Tensor, kv_len: int,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """One forward of (B, T) queries over the rows' slots -> logits of each row's last query (B, V).

    Prefill (T = prompt length, left-padded) and decode (T = 1) both run through here. The prefix
    already sits in the slots, so the model gets prefix=None.
    """
    prompt_reads = input_ids.numel() * kv_len if input_ids.shape[1] > 1 else 0
    if fused_attention_ok(model, slots, mixed=False, prompt_reads=prompt_reads):
        cache, mask = SlotCache(slots, rows, write_pos, kv_len, limit), None  # the kernel takes each query's limit
    else:
        cache, mask = SlotCache(slots, rows, write_pos, kv_len), slot_mask(limit, kv_len, slots.kv.dtype)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True,
                prefix=None, logits_to_keep=1)
    return out.logits[:, -1]  # (B, V)


# A part of a mixed forward: ids, positions, write slots, limits (each (B, T)), slot rows, kv_len
MixedPart = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", int]


class Part:
    """One part of a mixed forward: `batch` rows of `length` queries each, laid out one after the
    other in the forward's flat token axis, with their own slots (cache) and mask (None when
    MixedSlots attends to all parts in one call)."""

    def __init__(self, cache: SlotCache, mask: torch.Tensor | None, batch: int, length: int):
        self.cache, self.mask, self.batch, self.length = cache, mask, batch, length


class MixedSlots:
    """The cache of a forward whose tokens are several parts in one flat (1, M) axis: the decode
    queries of the running rows (B, 1) and prompt chunks (B', T') of rows being prefilled. The
    dense parts of every block (norms, projections, MLP: all the weight reads) run once over all M
    tokens, and so do rotary and the write of their keys and values to the slots (`write_new`, one
    kernel a layer on CUDA); attention runs per part, each over its own rows' slots with its own
    mask. A row is in one part only, or idle in the decode part (then its query writes the row's
    scratch slot, never read), so the order of the writes does not matter.

    With `limits` (every token's key count, flat), attention too is one call for all parts
    (kernels.slot_attention): no part gathers its rows' slots, builds a mask or needs its own call."""

    owns_masks = True  # ChatGLMModel.forward builds no mask: each part carries its own, or `limits` rule

    def __init__(self, parts: list[Part], limits: torch.Tensor | None = None):
        self.parts = parts
        caches = [part.cache for part in parts]
        # Every token's slot row and slot, flat in the forward's token order: one SlotCache writes them.
        self.writer = SlotCache(caches[0].slots, torch.cat([c.flat_rows for c in caches]),
                                torch.cat([c.flat_pos for c in caches])[:, None], caches[0].kv_len, limits)

    def write_new(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer_idx: int, heads: int,
                  groups: int) -> torch.Tensor:
        """qkv (1, M, (H + 2G) D) -> rotated q (1, M, H, D), every token's key and value in its slot."""
        return self.writer.write_new(qkv[0][:, None], cos[0][:, None], sin[0][:, None], layer_idx, heads,
                                     groups).transpose(0, 1)

    def attend(self, attention: torch.nn.Module, q: torch.Tensor, kv: None) -> torch.Tensor:
        """q (1, M, H, D) -> (1, M, H*D): all parts in one kernels.slot_attention call (with `limits`),
        else each part through `attention.attend` over its slots. kv is None: the model hands a cache
        with `write_new` the new keys and values there."""
        if self.writer.limits is not None:
            return self.writer.fused(q, attention.layer_idx).view(1, q.shape[1], -1)
        out, start = [], 0
        for part in self.parts:
            n = part.batch * part.length
            q_part = q[0, start:start + n].view(part.batch, part.length, *q.shape[2:])
            out.append(attention.attend(q_part, None, part.mask, part.cache, None).view(n, -1))  # reads only
            start += n
        return torch.cat(out)[None]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def forward_mixed(model: torch.nn.Module, slots: KVSlots, parts: list[MixedPart]) -> torch.Tensor:
    """One forward over several parts (see MixedSlots) -> logits of each part's rows' last query,
    part after part (sum of the parts' B, V).

    parts: per part (input_ids, position_ids, write_pos, limit), each (B, T); its (B,) slot rows, or
    None for rows 0..B-1 (a decode part); and kv_len, the slots its queries read (>= limit).
    """
    dtype = slots.kv.dtype
    prompt_reads = sum(p[0].numel() * p[5] for p in parts if p[4] is not None)  # prompt parts have slot rows
    fused = fused_attention_ok(model, slots, mixed=True, prompt_reads=prompt_reads)
    mixed, keep, start = [], [], 0
    for ids, _, write, limit, rows, kv_len in parts:
        batch, length = ids.shape
        mask = None if fused else slot_mask(limit, kv_len, dtype)
        mixed.append(Part(SlotCache(slots, rows, write, kv_len), mask, batch, length))
        keep.append(start + length - 1 + length * torch.arange(batch, device=ids.device))
        start += batch * length
    input_ids = torch.cat([p[0].reshape(-1) for p in parts])[None]
    position_ids = torch.cat([p[1].reshape(-1) for p in parts])[None]
    limits = torch.cat([p[3].reshape(-1) for p in parts]) if fused else None
    hidden = model.transformer(input_ids, position_ids, None, MixedSlots(mixed, limits), None)  # (1, M, hidden)
    return model.transformer.output_layer(hidden[0, torch.cat(keep)])


PREFILL_GRAPH_TOKENS = 1024  # prompt forwards padded to at most this many tokens replay a CUDA graph
PREFILL_GRAPH_KV = 1024  # ... and reading at most this many slots; bigger ones are compute-bound: eager
PREFILL_GRAPH_WIDTH = 16  # the shortest padded chunk
MIXED_GRAPH_TOKENS = 512  # prompt tokens (padded) a captured decode step takes in ([serving] prefill_with_decode)


def prefill_shapes(max_rows: int, kv_lengths: list[int], max_tokens: int = PREFILL_GRAPH_TOKENS,
                   max_kv: int = PREFILL_GRAPH_KV) -> list[tuple[int, int, int]]:
    """(rows, tokens, kv_len) shapes a prompt forward is padded to, so that it replays a CUDA graph:
    rows 1, 2, 4, ... (at most max_rows), tokens 16, 32, ... with rows x tokens <= max_tokens, and
    the decode graphs' KV lengths up to max_kv (at least the tokens: a chunk's last slot is past
    them). A forward of up to ~1k tokens costs ~18 ms of Python and kernel launches eagerly at
    ChatGLM2-6B's shape for ~6 ms of kernels; a larger one keeps the GPU busy longer than that."""
    shapes = []
    rows = 1
    while rows <= max_rows:
        width = PREFILL_GRAPH_WIDTH
        while rows * width <= max_tokens:
            shapes += [(rows, width, kv) for kv in kv_lengths if width <= kv <= max_kv]
            width *= 2
        rows *= 2
    return shapes


def idle_inputs(batch: int, length: int, pad: int, scratch: int, device: torch.device) -> list[torch.Tensor]:
    """(ids, positions, write slots, limits), each (batch, length), of queries that change nothing:
    padding tokens at position 0, written to the scratch slot, seeing slot 0 alone."""
    return [torch.full((batch, length), value, dtype=torch.long, device=device) for value in (pad, 0, scratch, 1)]


Outputs = tuple[torch.Tensor, ...]
DecodeOutputs = Outputs
DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], DecodeOutputs]

MIN_KV_BUCKET = 256  # the shortest KV length a decode graph reads (see kv_buckets)


def kv_buckets(length: int) -> list[int]:
    """KV lengths the decode graphs are captured for: 256, 512, ... doubling, then the full slot
    length. A step reads the smallest that holds its rows' slots, so short conversations do not
    pay for the longest context a row may reach (the attention kernel reads every slot it is given:
    64 rows x 8,320 slots are 15 GB of keys and values per step at ChatGLM2-6B's shape)."""
    buckets, b = [], MIN_KV_BUCKET
    while b < length:
        buckets.append(b)
        b *= 2
    return buckets + [length]


def capture(forward: Callable[..., Outputs], static: list[torch.Tensor], kv_len: int, pool: tuple,
            device: torch.device) -> tuple[torch.cuda.CUDAGraph, Outputs]:
    """`forward(*static, kv_len)` captured in a CUDA graph (after two warm-up calls on a side stream:
    lazy initialisation must not happen during capture) -> the graph and its output tensors."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            forward(*static, kv_len)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA work of other threads (prefix loads) must not break this capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outputs = forward(*static, kv_len)
    return graph, outputs


class ShapeGraphs:
    """A forward captured in a CUDA graph per shape key, then replayed with the inputs copied into
    that graph's static buffers.

    `forward(*static, kv_len)` must read and write only static tensors (the slot buffers and its
    inputs), so a replay with new inputs copied in computes exactly what an eager call would; it
    returns a tuple of tensors. shapes: key -> (idle static inputs, kv_len), captured in that order
    (the largest first: smaller ones reuse the pool's memory). The scheduler's decode steps
    (`GraphedDecode`), prompt forwards (`GraphedPrefill`) and decode steps with prompt chunks inside
    (`GraphedMixed`) are such graphs, sharing one pool.

    Sharing is safe as the scheduler uses them: every graph's outputs stay referenced here, so no
    graph captured later computes in their memory; a later graph's outputs may lie in an earlier
    one's scratch memory, so they are read (indexed, cloned) before any other replay.
    """

    def __init__(self, forward: Callable[..., Outputs], shapes: dict, device: torch.device, pool: tuple | None = None):
        self.graphs: dict = {}
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        for key, (static, kv_len) in shapes.items():
            graph, outputs = capture(forward, static, kv_len, pool, device)
            self.graphs[key] = (graph, static, outputs)

    def replay(self, key, *inputs: torch.Tensor) -> Outputs:  # noqa: ANN001 - a shape key
        graph, static, outputs = self.graphs[key]
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return outputs  # overwritten by the next replay: read (or copy) them before then

    __call__ = replay


class GraphedDecode(ShapeGraphs):
    """The static-shape decode step captured once per (batch bucket, KV length bucket), then replayed.

    `decode(input_ids, position_ids, write_pos, limit, kv_len)`, inputs (n, 1) -> a tuple of
    tensors (the scheduler's: logits, greedy tokens, finite flags). Called with the step's inputs
    and `reach` (the most slots any row sees), it replays the graph of the shortest KV length that
    holds them.
    """

    def __init__(self, decode: DecodeFn, buckets: list[int], kv_lengths: list[int], scratch: int,
                 device: torch.device, pool: tuple | None = None):
        self.kv_lengths = sorted(kv_lengths)
        idle = {n: idle_inputs(n, 1, 0, scratch, device) for n in buckets}  # one set per batch bucket
        super().__init__(decode, {(n, kv): (idle[n], kv) for n in sorted(buckets, reverse=True)
                                  for kv in reversed(self.kv_lengths)}, device, pool)

    def kv_bucket(self, reach: int) -> int:
        """The shortest captured KV length >= reach (the most slots any row of the step sees)."""
        return next(k for k in self.kv_lengths if k >= reach)

    def __call__(self, *inputs: torch.Tensor, reach: int) -> DecodeOutputs:
        return self.replay((inputs[0].shape[0], self.kv_bucket(reach)), *inputs)


def by_size(shapes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(rows, tokens, kv_len) shapes, the most padded tokens (then slots) first: the capture order."""
    return sorted(shapes, key=lambda s: (s[0] * s[1], s[2]), reverse=True)


class GraphedPrefill(ShapeGraphs):
    """Prompt forwards captured once per `prefill_shapes` shape (rows, tokens, kv_len), replayed with
    the padded inputs copied in (see Scheduler._prefill_inputs).

    `prefill(input_ids, position_ids, write_pos, limit, slot_rows, kv_len)`: inputs (rows, tokens)
    and slot rows (rows,) -> a tuple of tensors (the scheduler's: the logits of each row's last
    query). Idle inputs use slot row 0: they write its scratch slot only.
    """

    def __init__(self, prefill: Callable[..., Outputs], shapes: list[tuple[int, int, int]], pad: int, scratch: int,
                 device: torch.device, pool: tuple | None = None):
        super().__init__(prefill, {(rows, width, kv): ([*idle_inputs(rows, width, pad, scratch, device),
                                                         torch.zeros(rows, dtype=torch.long, device=device)], kv)
                                   for rows, width, kv in by_size(shapes)}, device, pool)


class GraphedMixed(ShapeGraphs):
    """Decode steps of all `rows` batch rows with one group of prompt chunks inside their forward
    (see MixedSlots), captured once per prompt shape (rows', tokens, kv_len); both parts read
    kv_len slots.

    `mixed(decode ids, positions, write slots, limits, each (rows, 1), prompt ids, positions, write
    slots, limits, each (rows', tokens), prompt slot rows (rows',), kv_len)` -> a tuple of tensors
    (the scheduler's: logits, greedy tokens, finite flags of the rows + rows' last queries).
    """

    def __init__(self, mixed: Callable[..., Outputs], shapes: list[tuple[int, int, int]], rows: int, pad: int,
                 scratch: int, device: torch.device, pool: tuple | None = None):
        super().__init__(mixed, {(prompts, width, kv): ([*idle_inputs(rows, 1, 0, scratch, device),
                                                         *idle_inputs(prompts, width, pad, scratch, device),
                                                         torch.zeros(prompts, dtype=torch.long, device=device)], kv)
                                 for prompts, width, kv in by_size(shapes)}, device, pool)
