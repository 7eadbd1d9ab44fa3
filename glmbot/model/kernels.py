"""Hand-written CUDA kernels (Triton) for two memory-bound steps of prefix training on packed tokens,
and for the serving engine's write of new keys and values to their slots.

torch.compile's own kernels for these ran at a fraction of the memory bandwidth on an H200 (the
train bench's 6B shape, batch 32): the SwiGLU backward, whose result [da | db] it wrote as one
concatenation with masked loads (0.25 ms per layer), and the rotary backward gathered from the
padded attention layout (0.14 ms per layer). Each op here is a `torch.library` custom op: opaque
to torch.compile, with a plain-torch implementation that runs wherever Triton or CUDA is missing
(CPU, the tests); both compute in fp32 and round once (checked equal on an H200: tests/test_kernels.py),
except `rotary_to_slots`'s torch form, which keeps the eager model's rotary in the model dtype.

- `scatter_rows` / `gather_rows`: packed rows to their places in a zero-filled padded layout and
  back (plain torch; the model's packed training layout uses them as each other's backward).
- `swiglu(h)`: silu(a) * b for h = [a | b]; its backward writes [da | db] in one pass.
- `rotary_scatter(qkv, cos, sin, index, rows, heads, groups)`: rotary on the queries and keys of
  packed tokens, scattered with the values to their rows of the zero-padded attention layout;
  its backward is the inverse rotation gathered back into the packed (M, (H + 2G) D) layout.
- `rotary_to_slots(qkv, cos, sin, slots, rows, write_pos, heads, groups)`: the serving engine's new
  tokens: rotary on queries and keys, the keys and values written straight to their KV slots (one
  kernel a layer where rotary and the slot write were two). No autograd (serving only). On CUDA
  this replaces the serving path's rotary even without torch.compile (fp32, one rounding, where
  eager bf16 rounds three times) and whatever `compile_dense(rotary=...)` names.
- `slot_attention(q, slots, rows, limits)`: attention of any mix of queries (decode rows, prompt
  chunks) over their rows' KV slots, query n seeing slots [0, limits[n]) of row rows[n]: one kernel
  for a serving step's parts, where each part takes a gather of its rows' slots, a mask and an
  attention call of its own. A query's group of heads shares one pass over the keys. Serving's
  default for decode steps and short prompts (`kv_slots.DEFAULT_SLOT_ATTENTION`; timed on an H100).
- `l2_prefetch(t, nbytes)`: asks the memory system to bring the first `nbytes` of `t` into the L2
  cache and returns at once (one `prefetch.global.L2` per 128-byte line; no result, nothing read
  into registers). Serving can issue it for a layer's dense weight before that layer's attention, so
  the product after attention need not start cold (`set_l2_prefetch`; off until measured on a GPU,
  bench/l2_prefetch.py). A no-op off CUDA or without Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glmbot.model.rotary import apply_rotary

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

_LIB = "glmbot"


def scatter_rows(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """The first len(index) rows of x at rows `index` of a zero-filled (rows, ...) tensor."""
    out = x.new_zeros((rows, *x.shape[1:]))
    out[index] = x[:index.shape[0]]
    return out


def gather_rows(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """x[index], then zero rows up to `rows`."""
    return _zero_rows_to(x[index], rows)


def _zero_rows_to(t: torch.Tensor, rows: int) -> torch.Tensor:
    """(n, ...) -> (rows, ...), zero rows appended."""
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, rows - t.shape[0]))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The model's apply_rotary in fp32, rounded once (as the compiled form computes it)."""
    return apply_rotary(x.float(), cos.float(), sin.float()).to(x.dtype)


# -- plain-torch implementations (every device; the reference for the Triton kernels) ---------

def _swiglu_torch(h: torch.Tensor) -> torch.Tensor:
    a, b = h.float().chunk(2, dim=-1)
    return (F.silu(a) * b).to(h.dtype)


def _swiglu_backward_torch(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    a, b = h.float().chunk(2, dim=-1)
    g = grad.float()
    s = torch.sigmoid(a)
    return torch.cat((g * b * s * (1 + a * (1 - s)), g * a * s), dim=-1).to(h.dtype)


def _rotary_scatter_torch(qkv, cos, sin, index, rows: int, heads: int, groups: int):
    n, d = index.shape[0], cos.shape[-1]
    q, k, v = qkv[:n].split([heads * d, groups * d, groups * d], dim=-1)
    c, s = cos[:n], sin[:n]
    kv = torch.stack((_rotate(k.reshape(n, groups, d), c, s), v.reshape(n, groups, d)), dim=1)
    return scatter_rows(_rotate(q.reshape(n, heads, d), c, s), index, rows), scatter_rows(kv, index, rows)


def _rotary_gather_torch(dq, dkv, cos, sin, index):
    n = index.shape[0]
    c, s = cos[:n], -sin[:n]
    dq, dkv = dq[index], dkv[index]
    rows = torch.cat((_rotate(dq, c, s).flatten(1), _rotate(dkv[:, 0], c, s).flatten(1), dkv[:, 1].flatten(1)), dim=-1)
    return _zero_rows_to(rows, cos.shape[0])


def _rotary_to_slots_torch(qkv, cos, sin, slots, rows, write_pos, heads: int, groups: int):
    # The eager model's own rotary (apply_rotary, in the model dtype): the same bits as before this op.
    n, d = qkv.shape[0], cos.shape[-1]
    q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
    c, s = cos[:, None], sin[:, None]
    # Advanced indices around slices put the indexed dims first: the target is (N, 2, G, D).
    slots[rows, :, :, write_pos] = torch.stack((apply_rotary(k.reshape(n, groups, d), c, s),
                                                v.reshape(n, groups, d)), dim=1)
    return apply_rotary(q.reshape(n, heads, d), c, s)


def _slot_attention_torch(q, slots, rows, limits):
    # Each query alone: its row's readable slots, its own key count (SDPA's math; fp32 inside).
    groups, out = slots.shape[2], torch.empty_like(q)
    for n, (row, limit) in enumerate(zip(rows.tolist(), limits.tolist())):
        k, v = slots[row, 0, :, :limit], slots[row, 1, :, :limit]  # (G, limit, D)
        out[n] = F.scaled_dot_product_attention(q[n].view(groups, -1, q.shape[-1]).float(), k.float(),
                                                v.float()).view(q.shape[1:]).to(q.dtype)
    return out


def _qkv_width(dq: torch.Tensor, dkv: torch.Tensor) -> int:
    return dq.shape[1] * dq.shape[2] + 2 * dkv.shape[2] * dkv.shape[3]


# -- the ops ----------------------------------------------------------------------------------

@torch.library.custom_op(f"{_LIB}::swiglu", mutates_args=())
def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(a) * b for h = [a | b] along the last dimension (computed in fp32, rounded once)."""
    return _swiglu_torch(h)


@swiglu.register_fake
def _(h):
    return h.new_empty((*h.shape[:-1], h.shape[-1] // 2))


@torch.library.custom_op(f"{_LIB}::swiglu_backward", mutates_args=())
def swiglu_backward(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """h (..., 2F) = [a | b], grad (..., F) of silu(a) * b -> dh (..., 2F) = [da | db]."""
    return _swiglu_backward_torch(h, grad)


@swiglu_backward.register_fake
def _(h, grad):
    return torch.empty_like(h)


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _swiglu_grad(ctx, grad):
    (h,) = ctx.saved_tensors
    return swiglu_backward(h, grad.contiguous())


swiglu.register_autograd(_swiglu_grad, setup_context=_swiglu_setup)


@torch.library.custom_op(f"{_LIB}::rotary_scatter", mutates_args=())
def rotary_scatter(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor, rows: int,
                   heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed tokens qkv (M, (H + 2G) D), the first N = len(index) real; cos/sin (M, 1, D) full-width
    rotary tables (see modeling.rotary_tables) -> q (rows, H, D) and kv (rows, 2, G, D) (keys
    rotated, then values), token n at row index[n], zeros elsewhere."""
    return _rotary_scatter_torch(qkv, cos, sin, index, rows, heads, groups)


@rotary_scatter.register_fake
def _(qkv, cos, sin, index, rows, heads, groups):
    d = cos.shape[-1]
    return qkv.new_empty((rows, heads, d)), qkv.new_empty((rows, 2, groups, d))


@torch.library.custom_op(f"{_LIB}::rotary_gather", mutates_args=())
def rotary_gather(dq: torch.Tensor, dkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  index: torch.Tensor) -> torch.Tensor:
    """The backward of `rotary_scatter`: dq (rows, H, D), dkv (rows, 2, G, D) -> dqkv (M, (H + 2G) D),
    M = len(cos): row index[n]'s gradients rotated back (by -angle) in packed row n, zeros in the
    filler rows n >= N."""
    return _rotary_gather_torch(dq, dkv, cos, sin, index)


@rotary_gather.register_fake
def _(dq, dkv, cos, sin, index):
    return dq.new_empty((cos.shape[0], _qkv_width(dq, dkv)))


def _rotary_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:4])


def _rotary_grad(ctx, dq, dkv):
    cos, sin, index = ctx.saved_tensors
    return rotary_gather(dq.contiguous(), dkv.contiguous(), cos, sin, index), None, None, None, None, None, None


rotary_scatter.register_autograd(_rotary_grad, setup_context=_rotary_setup)


@torch.library.custom_op(f"{_LIB}::rotary_to_slots", mutates_args=("slots",))
def rotary_to_slots(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor,
                    write_pos: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """N new tokens' projections qkv (N, (H + 2G) D), their full-width rotary tables cos/sin (N, D)
    (see modeling.rotary_tables), one layer's KV slots (R, 2, G, S, D) -> the rotated queries
    (N, H, D); token n's rotated key and its value are written to slots[rows[n], :, :, write_pos[n]].
    The Triton kernel rotates in fp32 and rounds once (as the compiled model does); elsewhere the
    eager model's rotary. Tokens sharing a slot (padding on a scratch slot) may land in any order."""
    return _rotary_to_slots_torch(qkv, cos, sin, slots, rows, write_pos, heads, groups)


@rotary_to_slots.register_fake
def _(qkv, cos, sin, slots, rows, write_pos, heads, groups):
    return qkv.new_empty((qkv.shape[0], heads, cos.shape[-1]))


@torch.library.custom_op(f"{_LIB}::slot_attention", mutates_args=())
def slot_attention(q: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Queries q (N, H, D), one layer's KV slots (R, 2, G, S, D), each query's slot row rows (N,) and
    key count limits (N,) -> attention output (N, H, D): query n attends over keys and values
    [0, limits[n]) of row rows[n], heads g*H/G.. of it over group g, scaled by D^-0.5, as SDPA with
    `kv_slots.slot_mask` computes it. The Triton kernel (CUDA, the shapes `slot_attention_supported`
    takes; other CUDA inputs are refused) keeps scores and sums in fp32 (flash-style online softmax);
    off CUDA a loop over the queries (tests, the CPU). Limits are not checked against the slot count."""
    return _slot_attention_torch(q, slots, rows, limits)


@slot_attention.register_fake
def _(q, slots, rows, limits):
    return torch.empty_like(q)


def slot_attention_supported(heads: int, groups: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether `slot_attention`'s Triton kernel takes these shapes (on CUDA the op refuses others:
    callers keep their own path for them)."""
    return (triton is not None and dtype in (torch.float16, torch.bfloat16) and heads % groups == 0
            and 16 <= head_dim <= 256 and _pow2(head_dim))


def l2_prefetch(t: torch.Tensor, nbytes: int) -> int:
    """See the module docstring: a hint, so it never changes a result; a no-op off CUDA/Triton. A
    quantized weight (glmbot.model.quantization) is asked for by its stored values. Returns the bytes
    of `t` asked for (nbytes clamped to its stored size, 0 for nbytes <= 0), on every device alike."""
    t = getattr(t, "qdata", t)
    nbytes = max(0, min(nbytes, t.numel() * t.element_size()))
    if triton is None or not t.is_cuda or nbytes == 0:
        return nbytes
    if not t.is_contiguous():
        raise ValueError(f"l2_prefetch asks for a contiguous span; got a tensor of shape {tuple(t.shape)} and "
                         f"strides {t.stride()}: pass a contiguous weight (or .contiguous() it once at load)")
    lines = triton.cdiv(nbytes, 128)
    _l2_prefetch_kernel[(triton.cdiv(lines, _PREFETCH_BLOCK),)](t.view(-1).view(torch.uint8), nbytes,
                                                                 BLOCK=_PREFETCH_BLOCK)
    return nbytes


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# -- Triton implementations (CUDA) --------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _swiglu_fwd_kernel(h_ptr, out_ptr, F_: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < F_
        a = tl.load(h_ptr + row * 2 * F_ + cols, mask=mask).to(tl.float32)
        b = tl.load(h_ptr + row * 2 * F_ + F_ + cols, mask=mask).to(tl.float32)
        out = a * tl.sigmoid(a) * b
        tl.store(out_ptr + row * F_ + cols, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(h_ptr, g_ptr, dh_ptr, F_: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < F_
        a = tl.load(h_ptr + row * 2 * F_ + cols, mask=mask).to(tl.float32)
        b = tl.load(h_ptr + row * 2 * F_ + F_ + cols, mask=mask).to(tl.float32)
        g = tl.load(g_ptr + row * F_ + cols, mask=mask).to(tl.float32)
        s = tl.sigmoid(a)
        da = g * b * s * (1 + a * (1 - s))
        db = g * a * s
        tl.store(dh_ptr + row * 2 * F_ + cols, da.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.store(dh_ptr + row * 2 * F_ + F_ + cols, db.to(dh_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rotate_tile(x_ptr, offs, pair_offs, c, s):
        """x * cos + x[pair] * sin for one (heads, D) tile, in fp32."""
        x = tl.load(x_ptr + offs).to(tl.float32)
        xp = tl.load(x_ptr + pair_offs).to(tl.float32)
        return x * c + xp * s

    @triton.jit
    def _rotary_scatter_kernel(qkv_ptr, cos_ptr, sin_ptr, index_ptr, q_ptr, kv_ptr,
                               H: tl.constexpr, G: tl.constexpr, D: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        dest = tl.load(index_ptr + n).to(tl.int64)
        d = tl.arange(0, D)
        c = tl.load(cos_ptr + n * D + d).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + n * D + d).to(tl.float32)[None, :]
        pair = d ^ 1
        width = (H + 2 * G) * D
        src = qkv_ptr + n * width
        hq = tl.arange(0, H)[:, None] * D
        q = _rotate_tile(src, hq + d[None, :], hq + pair[None, :], c, s)
        tl.store(q_ptr + dest * H * D + hq + d[None, :], q.to(q_ptr.dtype.element_ty))
        hk = tl.arange(0, G)[:, None] * D
        k = _rotate_tile(src + H * D, hk + d[None, :], hk + pair[None, :], c, s)
        v = tl.load(src + (H + G) * D + hk + d[None, :])
        tl.store(kv_ptr + dest * 2 * G * D + hk + d[None, :], k.to(kv_ptr.dtype.element_ty))
        tl.store(kv_ptr + dest * 2 * G * D + G * D + hk + d[None, :], v)

    @triton.jit
    def _rotary_to_slots_kernel(qkv_ptr, cos_ptr, sin_ptr, rows_ptr, pos_ptr, q_ptr, slots_ptr,
                                row_stride, kv_stride, group_stride, slot_stride,
                                H: tl.constexpr, G: tl.constexpr, D: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        row = tl.load(rows_ptr + n).to(tl.int64)
        slot = tl.load(pos_ptr + n).to(tl.int64)
        d = tl.arange(0, D)
        c = tl.load(cos_ptr + n * D + d).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + n * D + d).to(tl.float32)[None, :]
        pair = d ^ 1
        src = qkv_ptr + n * (H + 2 * G) * D
        hq = tl.arange(0, H)[:, None] * D
        q = _rotate_tile(src, hq + d[None, :], hq + pair[None, :], c, s)
        tl.store(q_ptr + n * H * D + hq + d[None, :], q.to(q_ptr.dtype.element_ty))
        hk = tl.arange(0, G)[:, None] * D
        k = _rotate_tile(src + H * D, hk + d[None, :], hk + pair[None, :], c, s)
        v = tl.load(src + (H + G) * D + hk + d[None, :])
        dst = slots_ptr + row * row_stride + slot * slot_stride + tl.arange(0, G)[:, None] * group_stride + d[None, :]
        tl.store(dst, k.to(slots_ptr.dtype.element_ty))
        tl.store(dst + kv_stride, v.to(slots_ptr.dtype.element_ty))

    @triton.jit
    def _rotary_gather_kernel(dq_ptr, dkv_ptr, cos_ptr, sin_ptr, index_ptr, out_ptr, N,
                              H: tl.constexpr, G: tl.constexpr, D: tl.constexpr):
        m = tl.program_id(0).to(tl.int64)
        width = (H + 2 * G) * D
        d = tl.arange(0, D)
        hq = tl.arange(0, H)[:, None] * D
        hk = tl.arange(0, G)[:, None] * D
        dst = out_ptr + m * width
        if m < N:
            src = tl.load(index_ptr + m).to(tl.int64)
            c = tl.load(cos_ptr + m * D + d).to(tl.float32)[None, :]
            s = -tl.load(sin_ptr + m * D + d).to(tl.float32)[None, :]
            pair = d ^ 1
            q = _rotate_tile(dq_ptr + src * H * D, hq + d[None, :], hq + pair[None, :], c, s)
            tl.store(dst + hq + d[None, :], q.to(out_ptr.dtype.element_ty))
            kv = dkv_ptr + src * 2 * G * D
            k = _rotate_tile(kv, hk + d[None, :], hk + pair[None, :], c, s)
            tl.store(dst + H * D + hk + d[None, :], k.to(out_ptr.dtype.element_ty))
            tl.store(dst + (H + G) * D + hk + d[None, :], tl.load(kv + G * D + hk + d[None, :]))
        else:  # filler rows
            zq = tl.zeros((H, D), dtype=out_ptr.dtype.element_ty)
            tl.store(dst + hq + d[None, :], zq)
            zk = tl.zeros((G, D), dtype=out_ptr.dtype.element_ty)
            tl.store(dst + H * D + hk + d[None, :], zk)
            tl.store(dst + (H + G) * D + hk + d[None, :], zk)

    @triton.jit
    def _slot_attention_kernel(q_ptr, slots_ptr, rows_ptr, limits_ptr, out_ptr,
                               row_stride, kv_stride, group_stride, slot_stride, scale,
                               HG: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """One (query, group): the group's HG heads are the rows of the tile (padded to HP >= 16, as
        tl.dot needs), so its keys and values are read once for all of them; keys [0, limit) of the
        query's slot row, BLOCK_N at a time."""
        n = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1).to(tl.int64)
        groups = tl.num_programs(1).to(tl.int64)
        row = tl.load(rows_ptr + n).to(tl.int64)
        limit = tl.load(limits_ptr + n)
        h = tl.arange(0, HP)
        head = h < HG
        d = tl.arange(0, D)
        offs_q = n * groups * HG * D + (g * HG + h)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + offs_q, mask=head[:, None], other=0.0)
        base = slots_ptr + row * row_stride + g * group_stride
        m_i = tl.full((HP,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((HP,), dtype=tl.float32)
        acc = tl.zeros((HP, D), dtype=tl.float32)
        for start in range(0, limit, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            seen = j < limit
            kv_offs = j[:, None] * slot_stride + d[None, :]
            k = tl.load(base + kv_offs, mask=seen[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale  # (HP, BLOCK_N), fp32
            s = tl.where(seen[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(base + kv_stride + kv_offs, mask=seen[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        l_i = tl.where(l_i > 0, l_i, 1.0)  # a query with no keys (limit 0; the engine never has one): zeros
        tl.store(out_ptr + offs_q, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=head[:, None])

    _SWIGLU_BLOCK = 1024
    _PREFETCH_BLOCK = 256  # lines a program asks for

    @triton.jit
    def _l2_prefetch_kernel(base, nbytes, BLOCK: tl.constexpr):
        offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64) * 128
        # The asm needs an output for Triton to emit it; is_pure=False keeps it without a use.
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.lt.s64 p, $2, $3; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
            "=r,l,l,l", [base + offs, offs, tl.full([BLOCK], nbytes, tl.int64)], dtype=tl.int32, is_pure=False,
            pack=1)

    def _triton_ok(*tensors: torch.Tensor) -> bool:
        return all(t.is_cuda and t.is_contiguous() for t in tensors)

    @swiglu.register_kernel("cuda")
    def _(h):
        if not _triton_ok(h):
            return _swiglu_torch(h)
        f = h.shape[-1] // 2
        rows = h.numel() // h.shape[-1]
        out = h.new_empty((*h.shape[:-1], f))
        _swiglu_fwd_kernel[(rows, triton.cdiv(f, _SWIGLU_BLOCK))](h, out, f, BLOCK=_SWIGLU_BLOCK)
        return out

    @swiglu_backward.register_kernel("cuda")
    def _(h, grad):
        if not _triton_ok(h, grad):
            return _swiglu_backward_torch(h, grad)
        f = h.shape[-1] // 2
        rows = h.numel() // h.shape[-1]
        dh = torch.empty_like(h)
        _swiglu_bwd_kernel[(rows, triton.cdiv(f, _SWIGLU_BLOCK))](h, grad, dh, f, BLOCK=_SWIGLU_BLOCK)
        return dh

    @rotary_scatter.register_kernel("cuda")
    def _(qkv, cos, sin, index, rows, heads, groups):
        d = cos.shape[-1]
        if not (_triton_ok(qkv, cos, sin, index) and _pow2(heads) and _pow2(groups) and _pow2(d)):
            return _rotary_scatter_torch(qkv, cos, sin, index, rows, heads, groups)
        q_pad = qkv.new_zeros((rows, heads, d))
        kv_pad = qkv.new_zeros((rows, 2, groups, d))
        if index.shape[0]:
            _rotary_scatter_kernel[(index.shape[0],)](qkv, cos, sin, index, q_pad, kv_pad, heads, groups, d)
        return q_pad, kv_pad

    @rotary_to_slots.register_kernel("cuda")
    def _(qkv, cos, sin, slots, rows, write_pos, heads, groups):
        d = cos.shape[-1]
        if not (_triton_ok(qkv, cos, sin, rows, write_pos) and slots.is_cuda and slots.stride(-1) == 1
                and qkv.dtype == slots.dtype and _pow2(heads) and _pow2(groups) and _pow2(d)):
            return _rotary_to_slots_torch(qkv, cos, sin, slots, rows, write_pos, heads, groups)
        q = qkv.new_empty((qkv.shape[0], heads, d))
        if qkv.shape[0]:
            _rotary_to_slots_kernel[(qkv.shape[0],)](qkv, cos, sin, rows, write_pos, q, slots, *slots.stride()[:4],
                                                     heads, groups, d)
        return q

    @rotary_gather.register_kernel("cuda")
    def _(dq, dkv, cos, sin, index):
        heads, d = dq.shape[1], dq.shape[2]
        groups = dkv.shape[2]
        if not (_triton_ok(dq, dkv, cos, sin, index) and _pow2(heads) and _pow2(groups) and _pow2(d)):
            return _rotary_gather_torch(dq, dkv, cos, sin, index)
        out = dq.new_empty((cos.shape[0], _qkv_width(dq, dkv)))
        if cos.shape[0]:
            _rotary_gather_kernel[(cos.shape[0],)](dq, dkv, cos, sin, index, out, index.shape[0], heads, groups, d)
        return out

    @slot_attention.register_kernel("cuda")
    def _(q, slots, rows, limits):
        heads, d = q.shape[1], q.shape[2]
        groups = slots.shape[2]
        if not (_triton_ok(q, rows, limits) and slots.is_cuda and slots.stride(-1) == 1 and q.dtype == slots.dtype
                and slot_attention_supported(heads, groups, d, q.dtype) and slots.shape[1] == 2
                and slots.shape[-1] == d and rows.shape == limits.shape == q.shape[:1]):
            # No quiet fallback: the torch form syncs with the host per query, which breaks CUDA-graph
            # capture and is far slower; callers check slot_attention_supported (kv_slots.fused_attention_ok).
            raise ValueError(
                f"slot_attention on CUDA takes contiguous q (N, H, D) and rows/limits (N,), fp16/bf16 slots "
                f"(R, 2, G, S, D) of q's dtype and head size, shapes slot_attention_supported accepts; got q "
                f"{tuple(q.shape)} {q.dtype}, slots {tuple(slots.shape)} {slots.dtype}, rows {tuple(rows.shape)}, "
                f"limits {tuple(limits.shape)}: keep the per-part attention for these (set_slot_attention('off'))")
        out = torch.empty_like(q)
        if q.shape[0]:
            per_group = heads // groups
            _slot_attention_kernel[(q.shape[0], groups)](q, slots, rows, limits, out, *slots.stride()[:4], d ** -0.5,
                                                         per_group, max(16, triton.next_power_of_2(per_group)), d, 64)
        return out
