"""glmbot.model.kernels: the ops equal the model's own math, forward and backward; their
registrations (fake tensors for torch.compile, autograd) are consistent; on CUDA the Triton
kernels equal the plain-torch implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glmbot.model import kernels
from glmbot.model.modeling import apply_rotary, pad_rows, rotary_cos_sin, rotary_tables

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def packed_qkv(device, dtype, heads=4, groups=2, d=16, real=5, filler=3, rows=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = real + filler
    qkv = torch.randn(m, (heads + 2 * groups) * d, generator=g).to(device, dtype)
    positions = torch.cat((torch.randint(0, 200, (real,), generator=g), torch.zeros(filler, dtype=torch.long)))
    cos, sin = rotary_tables(*rotary_cos_sin(positions[None].to(device), d // 4, dtype), d)
    index = torch.randperm(rows, generator=g)[:real].to(device)
    return qkv, cos[0], sin[0], index, rows, heads, groups


def reference_scatter(qkv, cos, sin, index, rows, heads, groups):
    """The model's own math: rotary on the packed rows (autograd's backward), then pad_rows."""
    d = cos.shape[-1]
    q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
    q = apply_rotary(q.reshape(len(qkv), heads, d), cos, sin)
    k = apply_rotary(k.reshape(len(qkv), groups, d), cos, sin)
    kv = torch.stack((k, v.reshape(len(qkv), groups, d)), dim=1)
    return pad_rows(q, index, rows), pad_rows(kv, index, rows)


@pytest.mark.parametrize("device", DEVICES)
def test_swiglu_equals_silu_times_gate_forward_and_backward(device):
    h = torch.randn(7, 2 * 24, device=device, requires_grad=True)
    grad = torch.randn(7, 24, device=device)
    a, b = h.chunk(2, dim=-1)
    expected = F.silu(a) * b
    got = kernels.swiglu(h)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, h, grad)[0], torch.autograd.grad(expected, h, grad)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_scatter_equals_rotary_then_padding_forward_and_backward(device):
    qkv, cos, sin, index, rows, heads, groups = packed_qkv(device, torch.float32)
    qkv.requires_grad_()
    got = kernels.rotary_scatter(qkv, cos, sin, index, rows, heads, groups)
    expected = reference_scatter(qkv, cos, sin, index, rows, heads, groups)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    padding = torch.ones(rows, dtype=torch.bool, device=device)
    padding[index] = False
    assert bool((got[0][padding] == 0).all()) and bool((got[1][padding] == 0).all())
    grads = [torch.randn_like(t) for t in got]
    own = torch.autograd.grad(got, qkv, grads)[0]
    torch.testing.assert_close(own, torch.autograd.grad(expected, qkv, grads)[0])
    assert bool((own[len(index):] == 0).all())  # filler rows get no gradient


def new_tokens(device, dtype, heads=4, groups=2, d=16, tokens=6, rows=5, slots=12, seed=0):
    """Serving's new tokens: projections (N, W), tables (N, D), one layer's view of a 3-layer slot
    buffer (L, R, 2, G, S + 1, D) with random contents, each token's own (row, slot)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (heads + 2 * groups) * d, generator=g).to(device, dtype)
    positions = torch.randint(0, 200, (tokens,), generator=g)
    cos, sin = rotary_tables(*rotary_cos_sin(positions[None].to(device), d // 4, dtype), d)
    buffer = torch.randn(3, rows, 2, groups, slots + 1, d, generator=g).to(device, dtype)
    where = torch.randperm(rows * slots, generator=g)[:tokens]
    return qkv, cos[0, :, 0], sin[0, :, 0], buffer, (where // slots).to(device), (where % slots).to(device), heads, groups


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_to_slots_equals_rotary_then_the_slot_write_and_touches_nothing_else(device):
    qkv, cos, sin, buffer, rows, pos, heads, groups = new_tokens(device, torch.float32)
    expected_buffer = buffer.clone()
    d = cos.shape[-1]
    q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
    expected_q = apply_rotary(q.reshape(-1, heads, d), cos[:, None], sin[:, None])
    expected_buffer[1, rows, 0, :, pos] = apply_rotary(k.reshape(-1, groups, d), cos[:, None], sin[:, None])
    expected_buffer[1, rows, 1, :, pos] = v.reshape(-1, groups, d)
    got = kernels.rotary_to_slots(qkv, cos, sin, buffer[1], rows, pos, heads, groups)
    # CPU: the eager model's very bits; CUDA's Triton kernel may fuse the multiply-adds (fp32 rounding)
    exact = {"rtol": 0, "atol": 0} if device == "cpu" else {}
    torch.testing.assert_close(got, expected_q, **exact)
    torch.testing.assert_close(buffer, expected_buffer, **exact)  # layers 0 and 2, other slots: as they were


@pytest.mark.parametrize("rows", [None, torch.tensor([3]), torch.tensor([3, 1])])
def test_slot_caches_hand_the_kernel_contiguous_indices(rows):
    """The Triton kernel takes contiguous indices only (else the multi-kernel torch path runs): one
    prompt row's (1, T) expansion must not reach it as a stride-0 view."""
    from glmbot.serving.kv_slots import KVSlots, SlotCache

    slots = KVSlots(2, 4, 2, 16, 32, torch.float32, "cpu")
    batch = 1 if rows is None else len(rows)
    cache = SlotCache(slots, rows, torch.arange(5 * batch).view(batch, 5), 32)
    assert cache.flat_rows.is_contiguous() and cache.flat_pos.is_contiguous()
    expected = (torch.zeros(batch, dtype=torch.long) if rows is None else rows)[:, None].expand(batch, 5).reshape(-1)
    assert torch.equal(cache.flat_rows, expected)


# A mixed step: 5 decode rows (row 1 idle: it sees slot 0 alone), then prompt chunks of 4 on rows 6
# (left-padded by two: padding sees slot 0) and 2 (behind 4 earlier slots), key counts growing along a chunk.
MIXED_STEP = [(None, [[9], [1], [14], [3], [20]]), ([6, 2], [[1, 1, 11, 12], [5, 6, 7, 8]])]
# The same over up to 1,000 slots: key counts at and around the kernel's 64-key blocks, the last row.
LONG_STEP = [(None, [[1], [63], [64], [65], [128], [129], [400], [1000]]), ([7], [[997, 998, 999, 1000]])]


def slot_queries(device, dtype, heads=4, groups=2, d=16, seed=0, parts=MIXED_STEP, length=40):
    """Queries of `parts` (slot rows or None for 0..B-1, key counts (B, T)) over one layer of a
    2-layer slot buffer (L, R, 2, G, S + 1, D) of 8 rows with random contents."""
    from glmbot.serving.kv_slots import KVSlots

    slots = KVSlots(2, 8, groups, d, length, dtype, device)
    g = torch.Generator().manual_seed(seed)
    slots.kv.copy_(torch.randn(slots.kv.shape, generator=g))
    parts = [(None if r is None else torch.tensor(r, device=device), torch.tensor(lim, device=device)) for r, lim in parts]
    q = torch.randn(sum(lim.numel() for _, lim in parts), heads, d, generator=g).to(device, dtype)
    return slots, parts, q


def masked_parts(slots, parts, q, layer: int) -> torch.Tensor:
    """The per-part path: each part's rows gathered, its slot_mask, grouped SDPA (fp32)."""
    from glmbot.serving.kv_slots import SlotCache, slot_mask

    out, start = [], 0
    kv_len = slots.length
    for rows, limit in parts:
        batch, length = limit.shape
        k, v = SlotCache(slots, rows, torch.zeros_like(limit), kv_len).read_kv(layer)  # (B, G, kv_len, D)
        q_part = q[start:start + batch * length].view(batch, length, *q.shape[1:]).transpose(1, 2)
        got = F.scaled_dot_product_attention(q_part.float(), k.float(), v.float(),
                                             attn_mask=slot_mask(limit, kv_len, torch.float32), enable_gqa=True)
        out.append(got.transpose(1, 2).reshape(-1, *q.shape[1:]))
        start += batch * length
    return torch.cat(out)


def slot_rows_and_limits(parts) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.cat([(torch.arange(lim.shape[0], device=lim.device) if r is None else r)[:, None].expand_as(lim).reshape(-1)
                      for r, lim in parts])
    return rows.contiguous(), torch.cat([lim.reshape(-1) for _, lim in parts])


def test_slot_attention_equals_each_parts_masked_attention():
    """kernels.slot_attention (its torch form here) over decode rows and prompt chunks at once gives
    what each part's own gather + slot_mask + SDPA gives, padding included; another layer's (or
    row's) slots give something else entirely."""
    slots, parts, q = slot_queries("cpu", torch.float32)
    rows, limits = slot_rows_and_limits(parts)
    for layer in range(2):
        got = kernels.slot_attention(q, slots.kv[layer], rows, limits)
        torch.testing.assert_close(got, masked_parts(slots, parts, q, layer), rtol=1e-5, atol=1e-5)
        assert (got - masked_parts(slots, parts, q, 1 - layer)).abs().max() > 0.1
        assert (got - kernels.slot_attention(q, slots.kv[layer], rows.roll(1), limits)).abs().max() > 0.1


def test_op_registrations_are_consistent():
    """torch.library.opcheck: the fake (meta) implementations give the real outputs' shapes and
    the autograd registrations are sound, as torch.compile relies on."""
    h = torch.randn(4, 12, requires_grad=True)
    torch.library.opcheck(kernels.swiglu, (h,))
    torch.library.opcheck(kernels.swiglu_backward, (h.detach(), torch.randn(4, 6)))
    qkv, cos, sin, index, rows, heads, groups = packed_qkv("cpu", torch.float32)
    torch.library.opcheck(kernels.rotary_scatter, (qkv.requires_grad_(), cos, sin, index, rows, heads, groups))
    dq, dkv = torch.randn(rows, heads, 16), torch.randn(rows, 2, groups, 16)
    torch.library.opcheck(kernels.rotary_gather, (dq, dkv, cos, sin, index))
    qkv, cos, sin, buffer, rows, pos, heads, groups = new_tokens("cpu", torch.float32)
    torch.library.opcheck(kernels.rotary_to_slots, (qkv, cos, sin, buffer[1], rows, pos, heads, groups))
    slots, parts, q = slot_queries("cpu", torch.float32)
    torch.library.opcheck(kernels.slot_attention, (q, slots.kv[0], *slot_rows_and_limits(parts)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_kernels_equal_the_torch_implementations(dtype, monkeypatch):
    """The ChatGLM2-6B shapes (32 heads, 2 groups, head_dim 128; SwiGLU width 13696), bf16 and fp32:
    the Triton kernels give the plain-torch implementations' values (both compute in fp32 and
    round once; allowing one rounding step for a different order of the fp32 operations)."""
    tol = {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    h = torch.randn(300, 2 * 13696, device="cuda", dtype=dtype)
    grad = torch.randn(300, 13696, device="cuda", dtype=dtype)
    torch.testing.assert_close(torch.ops.glmbot.swiglu(h), kernels._swiglu_torch(h), **tol)
    torch.testing.assert_close(torch.ops.glmbot.swiglu_backward(h, grad), kernels._swiglu_backward_torch(h, grad),
                               **tol)
    qkv, cos, sin, index, rows, heads, groups = packed_qkv("cuda", dtype, heads=32, groups=2, d=128, real=300,
                                                           filler=20, rows=400)
    got = torch.ops.glmbot.rotary_scatter(qkv, cos, sin, index, rows, heads, groups)
    for g, e in zip(got, kernels._rotary_scatter_torch(qkv, cos, sin, index, rows, heads, groups)):
        torch.testing.assert_close(g, e, **tol)
    dq, dkv = torch.randn_like(got[0]), torch.randn_like(got[1])
    torch.testing.assert_close(torch.ops.glmbot.rotary_gather(dq, dkv, cos, sin, index),
                               kernels._rotary_gather_torch(dq, dkv, cos, sin, index), **tol)
    # a 64-row decode step's tokens into one layer of a slot buffer
    qkv, cos, sin, buffer, rows, pos, heads, groups = new_tokens("cuda", dtype, heads=32, groups=2, d=128, tokens=64,
                                                                 rows=64, slots=40)
    expected = buffer.clone()
    q_torch = kernels._rotary_to_slots_torch(qkv, cos, sin, expected[1], rows, pos, heads, groups)

    def no_fallback(*args):
        raise AssertionError("the CUDA op fell back to its torch form")

    monkeypatch.setattr(kernels, "_rotary_to_slots_torch", no_fallback)
    q_triton = torch.ops.glmbot.rotary_to_slots(qkv, cos, sin, buffer[1], rows, pos, heads, groups)
    torch.testing.assert_close(q_triton, q_torch, **tol)
    torch.testing.assert_close(buffer, expected, **tol)
    untouched = torch.ones(buffer.shape[1], buffer.shape[4], dtype=torch.bool, device="cuda")
    untouched[rows, pos] = False
    assert torch.equal(buffer[1].permute(0, 3, 1, 2, 4)[untouched], expected[1].permute(0, 3, 1, 2, 4)[untouched])
    assert torch.equal(buffer[0], expected[0]) and torch.equal(buffer[2], expected[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize(("heads", "groups", "d", "parts", "length"), [
    (32, 2, 128, MIXED_STEP, 40),  # ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B: 16 heads a group
    (32, 2, 128, LONG_STEP, 1000),  # many 64-key blocks, the last slot row
    (32, 4, 128, LONG_STEP, 1000),  # glm-4-9b-chat-1m: 8 heads a group, padded to the 16-row tile
], ids=["6b", "6b-long", "8-heads-a-group"])
def test_triton_slot_attention_equals_the_masked_attention(heads, groups, d, parts, length):
    """bf16: the Triton kernel gives the per-part masked attention (fp32 from the same bf16 inputs)
    within bf16's rounding of the output (2^-8 relative of values |v| < ~4), on real queries and
    padding alike. Inputs it does not take are refused on CUDA, never run the slow torch form."""
    slots, parts, q = slot_queries("cuda", torch.bfloat16, heads=heads, groups=groups, d=d, parts=parts, length=length)
    rows, limits = slot_rows_and_limits(parts)
    with pytest.raises(ValueError, match="slot_attention on CUDA takes"):
        torch.ops.glmbot.slot_attention(q.float(), slots.kv[0].float(), rows, limits)
    expected = [masked_parts(slots, parts, q, layer) for layer in range(2)]
    for layer in range(2):
        got = torch.ops.glmbot.slot_attention(q, slots.kv[layer], rows, limits).float()
        torch.testing.assert_close(got, expected[layer], rtol=2 ** -7, atol=2 ** -6)
        assert (got - expected[1 - layer]).abs().max() > 0.1


def test_l2_prefetch_reports_the_stored_bytes_it_asks_for():
    """The count serving subtracts before asking for the next weight: nbytes clamped to the tensor's
    stored bytes (a quantized weight's int8 / int4 values, not the float size it stands for), 0 for
    none or a negative count; the same on every device."""
    from glmbot.model.quantization import RowQuantizedWeight, quantize_rows

    w = torch.randn(64, 32)
    assert kernels.l2_prefetch(w, 100) == 100 and kernels.l2_prefetch(w, 1 << 20) == w.nbytes
    assert kernels.l2_prefetch(w, 0) == 0 and kernels.l2_prefetch(w, -5) == 0
    for bits in (8, 4):
        q = RowQuantizedWeight(*quantize_rows(w, bits), bits, torch.float32)
        assert kernels.l2_prefetch(q, 1 << 20) == q.qdata.nbytes < q.nbytes  # stored values, not the float size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton")
def test_l2_prefetch_is_a_hint_that_changes_nothing_and_captures_in_a_graph():
    """Asking for a weight in L2 (part of it, all of it, past its end: clamped) leaves the weight and a
    product over it bit-for-bit as they were, replayed from a CUDA graph as serving runs it (against
    the same product captured without the requests)."""
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    copy = w.clone()
    sizes = (1 << 20, w.nbytes, w.nbytes + 999, 0)
    for n in sizes:  # compile each specialisation outside the capture
        kernels.l2_prefetch(w, n)
    x @ w.T  # cuBLAS's handle and workspace, outside the capture too
    torch.cuda.synchronize()
    outs = []
    for requests in (sizes, ()):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for n in requests:
                kernels.l2_prefetch(w, n)
            out = x @ w.T
        graph.replay()
        outs.append((graph, out))  # the graph keeps its output's memory
    torch.cuda.synchronize()
    assert torch.equal(w, copy) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][1].abs().sum() > 0  # the product ran
