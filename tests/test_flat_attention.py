"""The serving engine's flat attention (kv_slots.FlatAttention): every query of a forward, decode
rows and prompt chunks, in one call over the rows' slots. It must equal the per-part attention with
`slot_mask` on every real query: on the CPU its reference form, on CUDA flash's variable-length form
through strided views of the slot buffer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_engine import QUERIES, base, greedy, oracle, prefixes, tok  # noqa: F401 - fixtures

from glmbot.config import Settings
from glmbot.serving import kv_slots
from glmbot.serving.engine import Engine
from glmbot.serving.kv_slots import FlatAttention, KVSlots, SlotCache, slot_mask

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or not kv_slots._FLASH_SEQUSED, reason="needs CUDA and flash with seqused_k")])

# (slot rows or None for 0..B-1, limits (B, T)): 5 decode rows (row 1 idle: it sees slot 0 alone),
# then two prompt chunks of 4: row 6 left-padded by two (padding sees slot 0), row 2 a chunk behind
# 4 earlier slots. Limits grow by one along a row's real queries: causal from its last.
ENTRIES = [(None, [[9], [1], [14], [3], [20]]),
           ([6, 2], [[1, 1, 11, 12], [5, 6, 7, 8]])]
REAL = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12]  # flat queries that are not padding


def masked_attention(slots: KVSlots, q: torch.Tensor, entries, layer: int, kv_len: int) -> torch.Tensor:
    """The per-part path: each part's rows gathered, its slot_mask, grouped SDPA in fp32."""
    out, start = [], 0
    for rows, limit in entries:
        batch, length = limit.shape
        k, v = SlotCache(slots, rows, torch.zeros_like(limit), kv_len).read_kv(layer)  # (B, G, kv_len, D)
        q_part = q[start:start + batch * length].view(batch, length, *q.shape[1:]).transpose(1, 2)
        part = F.scaled_dot_product_attention(q_part.float(), k.float(), v.float(),
                                              attn_mask=slot_mask(limit, kv_len, torch.float32), enable_gqa=True)
        out.append(part.transpose(1, 2).reshape(-1, *q.shape[1:]))
        start += batch * length
    return torch.cat(out)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_flat_attention_equals_the_masked_attention_of_each_part(device, monkeypatch):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    heads, groups, dim, kv_len = 8, 2, 64, 32
    slots = KVSlots(3, 8, groups, dim, 40, dtype, device)
    g = torch.Generator().manual_seed(0)
    slots.kv.copy_(torch.randn(slots.kv.shape, generator=g))  # every row, slot and layer different
    entries = [(None if rows is None else torch.tensor(rows, device=device), torch.tensor(limit, device=device))
               for rows, limit in ENTRIES]
    q = torch.randn(sum(limit.numel() for _, limit in entries), heads, dim, generator=g).to(device, dtype)
    flat = FlatAttention(slots, entries, kv_len)
    if device == "cuda":  # flash must run, not the reference
        monkeypatch.setattr(FlatAttention, "_reference", lambda *a: pytest.fail("the reference ran on CUDA"))
    for layer in range(3):
        got = flat(q, layer)
        expected = masked_attention(slots, q, entries, layer, kv_len)
        # CPU: fp32 both ways. CUDA: bf16 flash against the fp32 attention of the same bf16 inputs; the
        # output is a convex mix of values (|v| < ~4), so its error is bf16's rounding of it: 2^-8 relative.
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if device == "cpu" else {"rtol": 2 ** -7, "atol": 2 ** -6}
        torch.testing.assert_close(got[REAL].float(), expected[REAL], **tolerance)
        # a wrong slot row or key count would read other random values: far outside that
        assert (got[REAL].float() - masked_attention(slots, q, entries, (layer + 1) % 3, kv_len)[REAL]).abs().max() > 0.1


@pytest.fixture
def flat_on():
    kv_slots.set_flat_attention(True)
    yield
    kv_slots.set_flat_attention(None)


def test_flat_attention_is_only_on_where_flash_runs_unless_forced(flat_on, base):
    model = base
    cpu = KVSlots(2, 2, 2, 8, 16, torch.float32, "cpu")
    assert kv_slots.flat_attention_ok(model, cpu)  # forced (this test's fixture)
    kv_slots.set_flat_attention(None)
    assert not kv_slots.flat_attention_ok(model, cpu)  # the CPU: never by default
    kv_slots.set_flat_attention(False)
    assert not kv_slots.flat_attention_ok(model, cpu)


@pytest.mark.parametrize("static_shapes", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("with_decode", [True, False], ids=["prompts-inside", "prompts-beside"])
def test_the_engine_with_flat_attention_gives_the_oracles_answers(flat_on, base, tok, prefixes, static_shapes,
                                                                  with_decode):
    """Prompts split into chunks of at most 5 tokens, inside decode steps or in forwards of their
    own, padded to static shapes or not, over prefixes of three lengths and the plain base: the
    answers with flat attention are the oracle's (generate() with its own mask)."""
    settings = Settings()
    settings.serving.prefill_with_decode = with_decode
    plan = [("support", QUERIES[0]), ("hr", QUERIES[1] * 2), (None, QUERIES[2]), ("ads", QUERIES[4])]
    calls = []
    real = FlatAttention.__call__

    def counted(self, q, layer_idx):
        calls.append(q.shape[0])
        return real(self, q, layer_idx)

    FlatAttention.__call__ = counted
    try:
        with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, prefill_token_budget=5,
                    static_shapes=static_shapes, settings=settings) as eng:
            results = eng.generate_many([greedy(q, d, 8) for d, q in plan])
            mixed = eng.stats().mixed_steps
    finally:
        FlatAttention.__call__ = real
    assert (mixed > 0) == with_decode and len(calls) > 0  # the flat attention really ran
    for (domain, query), result in zip(plan, results):
        assert result.text == oracle(base, tok, query, prefixes.get(domain), 8), (domain, query)
