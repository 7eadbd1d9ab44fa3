"""The model computes the spec's function: against a literal reference, incrementally, per row."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from glmbot.model import modeling
from glmbot.model.modeling import rotary_cos_sin
from glmbot.model.prefix import PrefixEncoder, PrefixKV, flat_to_kv
from tests.chatglm_reference import apply_rope, reference_logits, rope_cache
from tests.conftest import small_config, small_model

ATOL = 1e-5


def left_padded(lengths, vocab=600, seed=1):
    """Random ids with left padding: (input_ids, attention_mask), each (B, max(lengths))."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, T - n:] = 1
    return ids, mask


def random_encoder(config, p, projection=False, seed=0):
    torch.manual_seed(seed)
    enc = PrefixEncoder(config, p, projection)
    with torch.no_grad():
        enc.embedding.weight.normal_(0, 0.5)
    return enc


def test_full_forward_matches_reference_without_prefix(model):
    ids, mask = left_padded([9, 5, 7])
    ours = model(ids, attention_mask=mask, use_cache=False).logits
    ref = reference_logits(model.state_dict(), model.config, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("projection", [False, True])
def test_per_row_prefixes_match_reference(model, projection):
    cfg = model.config
    encoders = [random_encoder(cfg, 6, projection, 1), None, random_encoder(cfg, 3, projection, 2)]
    ids, mask = left_padded([8, 6, 4])
    prefix = PrefixKV.stack([e.kv() if e else None for e in encoders])
    assert prefix.length == 6 and prefix.mask is not None
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, prefix=prefix, use_cache=False).logits
        ref = reference_logits(model.state_dict(), cfg, ids, mask, [e() if e else None for e in encoders])
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=ATOL, rtol=1e-5)


def test_prefix_changes_logits_and_prefix_layout_is_official(model):
    cfg = model.config
    enc = random_encoder(cfg, 4)
    kv = enc.kv()  # (2L, G, P, D)
    flat = enc()
    l, which, g, d, p = 1, 1, 1, 5, 2  # layer 1 value, group 1, dim 5, position 2
    assert kv[2 * l + which, g, p, d] == flat[p, ((l * 2 + which) * cfg.kv_groups + g) * cfg.kv_channels + d]
    ids, mask = left_padded([5])
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        pre = model(ids, prefix=PrefixKV.repeat(kv, 1), use_cache=False).logits
    assert (plain - pre).abs().max() > 1e-2


@pytest.mark.parametrize("with_prefix", [False, True])
def test_incremental_decoding_equals_full_forward(model, with_prefix):
    cfg = model.config
    ids, mask = left_padded([10, 7, 4], seed=3)
    prefix = None
    if with_prefix:
        prefix = PrefixKV.stack([random_encoder(cfg, 5).kv(), None, random_encoder(cfg, 2, seed=4).kv()])
    with torch.no_grad():
        full = model(ids, attention_mask=mask, prefix=prefix, use_cache=False).logits
        cache = DynamicCache()
        split = 4  # a prompt chunk, then one token at a time
        steps = [model(ids[:, :split], attention_mask=mask[:, :split], prefix=prefix, cache=cache, use_cache=True).logits]
        for t in range(split, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], prefix=prefix, cache=cache, use_cache=True)
            steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=ATOL, rtol=1e-5)


def greedy(model, ids, mask, prefix, n):
    out = model.generate(input_ids=ids, attention_mask=mask, prefix=prefix, max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:]


def test_mixed_prefix_batch_equals_rows_alone(model):
    cfg = model.config
    kvs = [random_encoder(cfg, 7, seed=5).kv(), None, random_encoder(cfg, 3, True, seed=6).kv(),
           random_encoder(cfg, 1, seed=7).kv()]
    lengths = [6, 9, 3, 5]
    ids, mask = left_padded(lengths, seed=8)
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask, prefix=PrefixKV.stack(kvs), use_cache=False).logits
        batch_tokens = greedy(model, ids, mask, PrefixKV.stack(kvs), 8)
        for r, (kv, n) in enumerate(zip(kvs, lengths)):
            solo_ids = ids[r:r + 1, -n:]
            solo_prefix = PrefixKV.stack([kv])
            solo_logits = model(solo_ids, prefix=solo_prefix, use_cache=False).logits
            torch.testing.assert_close(batch_logits[r:r + 1, -n:], solo_logits, atol=ATOL, rtol=1e-5)
            solo_tokens = greedy(model, solo_ids, torch.ones_like(solo_ids), solo_prefix, 8)
            assert batch_tokens[r].tolist() == solo_tokens[0].tolist(), f"row {r}"


def test_generate_equals_manual_greedy_loop(model):
    kv = random_encoder(model.config, 4).kv()
    ids, mask = left_padded([6], seed=9)
    prefix = PrefixKV.repeat(kv, 1)
    with torch.no_grad():
        gen = greedy(model, ids, mask, prefix, 6)[0].tolist()
        seq = ids
        manual = []
        for _ in range(6):
            nxt = model(seq, prefix=prefix, use_cache=False).logits[0, -1].argmax().item()
            manual.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    assert gen == manual


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rotary_table_is_bit_equal_to_official(dtype):
    positions = torch.tensor([[0, 1, 2, 255, 256, 257, 1000, 2047, 2049, 5000]])
    cos, sin = rotary_cos_sin(positions, 32, dtype)
    table = rope_cache(8192, 128, dtype)[positions[0]]  # (T, 32, 2)
    assert torch.equal(cos[0, 0], table[..., 0]) and torch.equal(sin[0, 0], table[..., 1])



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_rotary_is_bit_equal_to_the_official_formula(dtype):
    from glmbot.model.modeling import apply_rotary, rotary_tables

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 128, generator=g).to(dtype)  # (B, H, T, D)
    positions = torch.tensor([[0, 1, 7, 300, 2047], [4, 5, 6, 7, 8]])
    ours = apply_rotary(x.transpose(1, 2), *rotary_tables(*rotary_cos_sin(positions, 32, dtype), 128)).transpose(1, 2)
    rope = rope_cache(8192, 128, dtype)[positions].transpose(0, 1)  # (T, B, 32, 2)
    official = apply_rope(x.permute(2, 0, 1, 3), rope).permute(1, 2, 0, 3)
    assert torch.equal(ours, official)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rotary_inverse_backward_is_bit_equal_to_autograd(dtype):
    """The trainer's rotary: same values, and its hand-written backward (the inverse rotation)
    gives autograd's gradient of apply_rotary bit for bit."""
    from glmbot.model.modeling import apply_rotary, rotary_inverse_backward, rotary_tables

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 128, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(2, 5, 3, 128, generator=g).to(dtype)
    cos, sin = rotary_tables(*rotary_cos_sin(torch.tensor([[0, 1, 9, 300, 2047], [3, 4, 5, 6, 7]]), 32, dtype), 128)
    ours = rotary_inverse_backward(x, cos, sin)
    reference = apply_rotary(x, cos, sin)
    assert torch.equal(ours, reference)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(reference, x, grad)[0])


def test_only_the_prefix_trains(model):
    model.requires_grad_(False)
    model.train()
    enc = random_encoder(model.config, 4)
    ids, _ = left_padded([6, 6])
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(ids, prefix=PrefixKV.repeat(enc.kv(), 2), labels=labels, use_cache=False)
    out.loss.backward()
    assert enc.embedding.weight.grad is not None and enc.embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_loss_is_shifted_cross_entropy(model):
    ids, _ = left_padded([7])
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels, use_cache=False)
    logits = out.logits[0, :-1]
    target = labels[0, 1:]
    keep = target != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, expected)


def test_official_ptuned_model_applies_its_own_prefix():
    base = small_model(seed=2)
    tuned = small_model(seed=2, pre_seq_len=5)
    tuned.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        tuned.transformer.prefix_encoder.embedding.weight.normal_(0, 0.5)
    ids, mask = left_padded([6, 4])
    with torch.no_grad():
        own = tuned(ids, attention_mask=mask, use_cache=False).logits
        explicit = base(ids, attention_mask=mask, use_cache=False,
                        prefix=PrefixKV.repeat(tuned.transformer.prefix_encoder.kv(), 2)).logits
    torch.testing.assert_close(own, explicit)
    # In training the official model drops out 10% of its prefix entries (scaled by 1/0.9).
    tuned.train()
    torch.manual_seed(0)
    out = tuned(ids, attention_mask=mask, use_cache=False).logits
    tuned.eval()
    assert out.shape == own.shape and not torch.allclose(out, own)


def test_flat_to_kv_shape():
    cfg = small_config()
    flat = torch.randn(3, cfg.prefix_width)
    assert flat_to_kv(flat, cfg.num_layers, cfg.kv_groups, cfg.kv_channels).shape == (2 * cfg.num_layers, 2, 3, 16)


def test_prefix_layers_come_from_one_unbind_with_the_indexing_gradient():
    """Every layer's prefix key/value is a view from one split of kv (one backward node, which
    stacks the gradients, instead of a zero-filled whole-kv gradient per layer), and the gradient
    reaching kv is each layer's own, in its slot."""
    kv = torch.randn(6, 2, 2, 3, 4, requires_grad=True)
    prefix = PrefixKV(kv * 1.0)
    parts = [t for layer in range(3) for t in prefix.layer(layer)]
    assert len({t.grad_fn for t in parts}) == 1
    assert prefix.layer(1)[0] is parts[2]  # split once, not per call
    grads = [torch.randn(2, 2, 3, 4) for _ in parts]
    assert torch.equal(torch.autograd.grad(parts, kv, grads)[0], torch.stack(grads))


def test_additive_4d_mask_matches_the_2d_path(model):
    from glmbot.model.modeling import build_attention_mask, position_ids_from_mask

    prefix = PrefixKV.stack([random_encoder(model.config, 3).kv(), None])
    ids, mask = left_padded([7, 4], seed=11)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, prefix=prefix, use_cache=False).logits
        additive = build_attention_mask(mask, prefix.mask, prefix.length, 7, 0, torch.float32, ids.device)
        positions = position_ids_from_mask(mask, 2, 7, 0, ids.device)
        got = model(ids, attention_mask=additive, position_ids=positions, prefix=prefix, use_cache=False).logits
    torch.testing.assert_close(got, expected)


def test_answer_loss_equals_forward_loss(model):
    ids, mask = left_padded([8, 5], seed=12)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    prefix = PrefixKV.stack([random_encoder(model.config, 3).kv(), None])
    from glmbot.model.modeling import answer_loss

    full = model(ids, attention_mask=mask, labels=labels, prefix=prefix, use_cache=False).loss
    torch.testing.assert_close(answer_loss(model, ids, mask, labels, prefix), full)


def test_gradient_checkpointing_gives_the_same_prefix_gradient(model):
    enc = random_encoder(model.config, 4)
    ids, mask = left_padded([9, 6], seed=13)
    labels = ids.clone()
    model.requires_grad_(False)
    model.train()
    grads = []
    for ckpt in (False, True):
        model.set_checkpointing(ckpt)
        enc.zero_grad()
        model(ids, attention_mask=mask, labels=labels, prefix=PrefixKV.repeat(enc.kv(), 2), use_cache=False).loss.backward()
        grads.append(enc.embedding.weight.grad.clone())
    model.set_checkpointing(False)
    assert model.transformer.encoder.gradient_checkpointing is False
    torch.testing.assert_close(grads[0], grads[1])


def right_padded(lengths, vocab=600, seed=1):
    """The trainer's layout: real tokens first, padding after (input_ids, attention_mask)."""
    ids, mask = left_padded(lengths, vocab, seed)
    order = torch.argsort(1 - mask, dim=1, stable=True)  # real tokens to the front, in order
    return ids.gather(1, order), mask.gather(1, order)


def test_training_layout_takes_the_lower_right_causal_path_and_equals_rows_alone(model):
    """A shared prefix on right-padded rows needs no materialised mask (flash on CUDA), and every
    real position's logits and the prefix gradient equal each row run alone."""
    from torch.nn.attention.bias import CausalBias

    from glmbot.model.modeling import answer_loss, build_attention_mask

    enc = random_encoder(model.config, 5, projection=True, seed=3)
    ids, mask = right_padded([9, 4, 7], seed=14)
    prefix = PrefixKV.repeat(enc.kv(), 3)
    built = build_attention_mask(mask, prefix.mask, prefix.length, 9, 0, torch.float32, ids.device)
    assert isinstance(built, CausalBias)
    # Left padding, a cache, or per-row prefix lengths still need the explicit mask.
    assert isinstance(build_attention_mask(left_padded([9, 4])[1], None, 5, 9, 0, torch.float32, ids.device),
                      torch.Tensor)
    ragged = PrefixKV.stack([enc.kv(), None, enc.kv()])
    assert isinstance(build_attention_mask(mask, ragged.mask, ragged.length, 9, 0, torch.float32, ids.device),
                      torch.Tensor)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, prefix=prefix, use_cache=False).logits
        for r in range(3):
            n = int(mask[r].sum())
            alone = model(ids[r:r + 1, :n], prefix=PrefixKV.repeat(enc.kv(), 1), use_cache=False).logits
            torch.testing.assert_close(batched[r, :n], alone[0], atol=ATOL, rtol=1e-5)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    losses = []
    for additive in (False, True):
        enc.zero_grad()
        if additive:  # the explicit additive mask the lower-right bias stands for
            full = torch.cat((torch.ones(3, 5, dtype=mask.dtype), mask), dim=1)
            allowed = torch.ones(9, 14).tril(5).bool()[None] & full.bool()[:, None]
            attn = torch.zeros(3, 1, 9, 14).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
            positions = torch.arange(9).expand(3, -1)
            logits = model(ids, attention_mask=attn, position_ids=positions, prefix=PrefixKV.repeat(enc.kv(), 3),
                           use_cache=False).logits
            keep = labels[:, 1:] != -100
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
        else:
            loss = answer_loss(model, ids, mask, labels, PrefixKV.repeat(enc.kv(), 3))
        loss.backward()
        losses.append((loss.detach(), enc.embedding.weight.grad.clone()))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1])


def test_cudnn_training_attention_uses_the_additive_form_of_the_lower_right_mask_with_the_same_training(
        model, monkeypatch):
    """set_training_attention("cudnn"): every layer gets the additive form of the training
    layout's lower-right mask, built once per forward, in an SDPA call that asks cuDNN first (on
    CPU SDPA runs its own kernels); loss and prefix gradient equal the flash path's."""
    import glmbot.model.modeling as modeling

    enc = random_encoder(model.config, 5, seed=8)
    ids, mask = right_padded([9, 4, 7], seed=16)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    expected = torch.ones(9, 14).tril(5).bool()  # token i: the 5 prefix slots and tokens <= i
    calls = []
    real_sdpa = modeling.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape, k.shape, attn_mask))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    results = []
    for attention in ("flash", "cudnn"):
        model.set_training_attention(attention)
        if attention != "flash":  # (a CausalBias dispatches through SDPA's torch-function hook: not recorded)
            monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", recording_sdpa)
        enc.zero_grad()
        loss = modeling.answer_loss(model, ids, mask, labels, PrefixKV.repeat(enc.kv(), 3))
        loss.backward()
        monkeypatch.undo()
        results.append((loss.detach(), enc.embedding.weight.grad.clone()))
    model.set_training_attention("flash")
    assert len(calls) == model.config.num_layers and all(c[2] is calls[0][2] for c in calls)
    groups, heads = model.config.kv_groups, model.config.num_attention_heads
    q_shape, k_shape, additive = calls[0]
    assert tuple(q_shape) == (3, heads, 9, 16) and tuple(k_shape) == (3, groups, 14, 16)
    assert additive.shape == (1, 1, 9, 14)
    assert torch.equal(additive[0, 0] == 0, expected)
    assert bool((additive[0, 0][~expected] == torch.finfo(additive.dtype).min).all())
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_training_attention_names_the_kinds_it_takes(model):
    with pytest.raises(ValueError, match="'cudnn2' is not one of flash, cudnn"):
        model.set_training_attention("cudnn2")


@pytest.mark.parametrize(("training", "multiple"), [(False, 1), (True, 1), (True, 4)])
def test_training_layout_runs_the_dense_parts_on_the_real_tokens_only(model, training, multiple):
    """Right-padded rows with a shared prefix: each block's dense parts see the N real tokens
    (and filler rows up to a multiple of pack_multiple; attention sees the padded rows), real
    positions keep their logits, padded ones come back zero; in training mode a batch without
    padding is packed too (one layout for the compiled parts)."""
    enc = random_encoder(model.config, 4, seed=9)
    ids, mask = right_padded([6, 2, 5], seed=17)
    rows_seen = []

    def recording(fn):
        def wrapped(x, *args, **kwargs):
            rows_seen.append(tuple(x.shape))
            return fn(x, *args, **kwargs)
        return wrapped

    kernels = modeling.BlockKernels(recording(modeling.attention_inputs), recording(modeling.block_outputs))
    model.train(training)
    model.transformer.pack_multiple = multiple
    try:
        with torch.no_grad():
            alone = [model.transformer(ids[r:r + 1, :n], None, None, None, PrefixKV.repeat(enc.kv(), 1))[0]
                     for r, n in enumerate(mask.sum(1).tolist())]  # no padding, no mask: not packed
            for layer in model.transformer.encoder.layers:
                layer.kernels = kernels
            packed = model.transformer(ids, None, mask, None, PrefixKV.repeat(enc.kv(), 3))
            full = torch.ones(2, 6, dtype=torch.long)
            model.transformer(ids[:2], None, full, None, PrefixKV.repeat(enc.kv(), 2))
    finally:
        model.uncompile_dense()
        model.eval()
        model.transformer.pack_multiple = 1
    for r, row in enumerate(alone):
        torch.testing.assert_close(packed[r, :row.shape[0]], row, atol=ATOL, rtol=1e-5)
    layers = model.config.num_layers
    rows = 13 if multiple == 1 else 16  # 6 + 2 + 5 real tokens, filled up to a multiple
    assert rows_seen[:2 * layers] == [(rows, model.config.hidden_size)] * 2 * layers
    assert bool((packed[mask == 0] == 0).all())
    unpadded = (12, model.config.hidden_size) if training else (2, 6, model.config.hidden_size)
    assert rows_seen[2 * layers:] == [unpadded] * 2 * layers


def test_filler_rows_of_the_packed_layout_leave_loss_and_prefix_gradient_unchanged(model):
    enc = random_encoder(model.config, 4, seed=10)
    ids, mask = right_padded([7, 3, 5], seed=18)
    labels = ids.masked_fill(mask == 0, -100)
    results = []
    for multiple in (1, 8):
        model.transformer.pack_multiple = multiple
        enc.zero_grad()
        loss = modeling.answer_loss(model, ids, mask, labels, PrefixKV.repeat(enc.kv(), 3))
        loss.backward()
        results.append((loss.detach(), enc.embedding.weight.grad.clone()))
    model.transformer.pack_multiple = 1
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_lower_right_path_without_grouped_kv_support_expands_kv_heads_to_the_same_logits(model, monkeypatch):
    """torch releases whose CausalBias takes no enable_gqa get the KV groups expanded to all heads."""
    import glmbot.model.modeling as modeling

    enc = random_encoder(model.config, 4, seed=6)
    ids, mask = right_padded([7, 5], seed=15)
    with torch.no_grad():
        grouped = model(ids, attention_mask=mask, prefix=PrefixKV.repeat(enc.kv(), 2), use_cache=False).logits
        monkeypatch.setattr(modeling, "_CAUSAL_BIAS_GQA", False)
        seen = []
        real_dispatch = modeling.CausalBias._dispatch

        def recording_dispatch(q, k, v, attn_mask, **kwargs):
            seen.append((k.shape[1], "enable_gqa" in kwargs))
            return real_dispatch(q, k, v, attn_mask, **kwargs)

        monkeypatch.setattr(modeling.CausalBias, "_dispatch", staticmethod(recording_dispatch))
        expanded = model(ids, attention_mask=mask, prefix=PrefixKV.repeat(enc.kv(), 2), use_cache=False).logits
    assert seen and all(s == (model.config.num_attention_heads, False) for s in seen)
    torch.testing.assert_close(expanded, grouped)


def test_compiled_dense_parts_are_one_graph_for_all_layers_and_equal_eager():
    """compile_dense() traces each dense part for every layer at once (no per-layer recompiles,
    which would hit dynamo's recompile limit on 28 layers): once for the first shape, once more
    with batch and length symbolic, and never again; the model's dimensions stay constants. Same
    logits as eager."""
    model = small_model(num_layers=3)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    enc = random_encoder(model.config, 4, seed=5)
    shapes = ([6, 3], [9, 9, 2], [5, 4, 4, 7])
    eager = []
    with torch.no_grad():
        for lengths in shapes:
            ids, mask = right_padded(lengths, seed=len(lengths))
            eager.append(model(ids, attention_mask=mask, prefix=PrefixKV.repeat(enc.kv(), len(lengths)),
                               use_cache=False).logits)
        torch._dynamo.reset()
        model.compile_dense(backend=counting_backend)
        try:
            for i, lengths in enumerate(shapes):
                ids, mask = right_padded(lengths, seed=len(lengths))
                got = model(ids, attention_mask=mask, prefix=PrefixKV.repeat(enc.kv(), len(lengths)),
                            use_cache=False).logits
                torch.testing.assert_close(got, eager[i])
                if i == 1:
                    after_two = len(graphs)
        finally:
            model.uncompile_dense()
            torch._dynamo.reset()
    # Each part: a graph for the first shape, one with the token counts symbolic, none for the third.
    assert after_two == len(graphs) == 4, [g.code for g in graphs]
    # Only token counts are symbolic (packed, real, padded rows: the first dimension of each input);
    # hidden size, heads and head_dim are constants.
    shapes = [tuple(n.meta["example_value"].shape) for g in graphs[-2:] for n in g.graph.nodes
              if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.Tensor)]
    assert any(not isinstance(shape[0], int) for shape in shapes), shapes
    assert all(isinstance(d, int) for shape in shapes for d in shape[1:]), shapes
    # Rotary kept out of the compiled graphs (a variant of the train bench): same logits.
    torch._dynamo.reset()
    model.compile_dense(torch.compiler.disable(modeling.apply_rotary), backend=counting_backend)
    try:
        with torch.no_grad():
            ids, mask = right_padded([6, 3], seed=2)
            got = model(ids, attention_mask=mask, prefix=PrefixKV.repeat(enc.kv(), 2), use_cache=False).logits
        torch.testing.assert_close(got, eager[0])
    finally:
        model.uncompile_dense()
        torch._dynamo.reset()
    compiled_again = graphs[4:]
    assert compiled_again and not any("flip" in g.code for g in compiled_again)  # the pair swap runs eagerly


def test_cudnn_first_puts_cudnn_in_front_and_keeps_switched_off_backends_off():
    """The grouped-KV attention paths ask for cuDNN first and deterministic decode for anything but
    cuDNN, but a backend the user switched off (an outer sdpa_kernel, torch.backends.cuda.enable_*_sdp)
    stays off, and all come back afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if modeling._CUDNN_FIRST is None:
        pytest.skip("this torch cannot reorder the SDPA backends")
    enabled = (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.flash_sdp_enabled,
               torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.math_sdp_enabled)
    with modeling.cudnn_first():
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert all(on() for on in enabled)
    with sdpa_kernel([SDPBackend.MATH]):  # e.g. a math-only reference run
        with modeling.cudnn_first():
            assert [on() for on in enabled] == [False, False, False, True]
    with modeling.reproducible_first():  # deterministic decode: never cuDNN, whose bits vary per call
        assert [on() for on in enabled] == [False, True, True, True]
    assert all(on() for on in enabled)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA device on which cuDNN attention runs (Ampere or newer)")
@pytest.mark.skipif(modeling._CUDNN_FIRST is None, reason="this torch cannot reorder the SDPA backends")
def test_masked_grouped_attention_runs_fused_whatever_the_process_wide_backend_order():
    """The serving engine's prompt parts (grouped KV, an additive mask tensor) run a fused kernel on
    CUDA even when the process-wide SDPA order ends in the math kernel (what torch restores after
    grouped decode's sdpa_kernel(set_priority=True) exits), and give an fp32 reference's values within
    bf16 rounding (math computes in fp32, 5-12x cuDNN's time on an H100 for 1-4 prompts of 64 tokens)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = small_config(hidden_size=1024, kv_channels=128, num_attention_heads=8, multi_query_group_num=2)
    attention = modeling.SelfAttention(config, 0)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 64, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    kv = torch.randn(2, 64, 2, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    visible = torch.ones(64, 64, device="cuda", dtype=torch.bool).tril().repeat(2, 1, 1)  # (B, T, keys)
    visible[1, :, :5] = False  # row 1: five left-padding keys nobody sees
    visible[1, :5, 0] = True  # ... and its padding queries see key 0 alone, as the engine's do
    mask = torch.zeros(2, 1, 64, 64, device="cuda", dtype=torch.bfloat16)
    mask.masked_fill_(~visible[:, None], torch.finfo(torch.bfloat16).min)
    engine_order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                    SDPBackend.CUDNN_ATTENTION]  # math before cuDNN
    with sdpa_kernel(engine_order, set_priority=True), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = attention.attend(q, kv, mask, None, None)
        torch.cuda.synchronize()
    kernels = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    assert not any("softmax" in name for name in kernels), kernels  # the math kernel's fp32 softmax
    assert any("sdpa" in name or "fmha" in name or "flash" in name for name in kernels), kernels

    k, v = (t.float().transpose(1, 2).repeat_interleave(4, dim=1) for t in kv.unbind(2))  # (B, H, keys, D)
    scores = q.float().transpose(1, 2) @ k.transpose(-1, -2) / 128 ** 0.5 + mask.float()
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 64, 8 * 128)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA device on which cuDNN attention runs (Ampere or newer)")
@pytest.mark.skipif(modeling._CUDNN_FIRST is None, reason="this torch cannot reorder the SDPA backends")
def test_deterministic_decode_attention_keeps_out_of_cudnn_whatever_the_process_wide_backend_order(monkeypatch):
    """Folded decode (`[serving] deterministic = true`) gives the same bits on every call even when
    the process-wide SDPA order puts cuDNN first (torch's own pick on Hopper at the first SDPA call):
    it never lands in cuDNN, whose results vary in the last bit, and matches an fp32 reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = small_config(hidden_size=1024, kv_channels=128, num_attention_heads=8, multi_query_group_num=2)
    attention = modeling.SelfAttention(config, 0)  # grouped_decode False: the deterministic, folded form
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(64, 1, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)  # 64 decode rows
    kv_new = torch.randn(64, 1, 2, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    past = torch.randn(64, 2, 2, 383, 128, device="cuda", dtype=torch.bfloat16, generator=g)  # (B, 2, G, slots, D)
    limit = torch.randint(1, 384, (64,), device="cuda", generator=g)
    mask = torch.zeros(64, 1, 1, 384, device="cuda", dtype=torch.bfloat16)
    mask.masked_fill_(torch.arange(384, device="cuda") >= limit[:, None, None, None], torch.finfo(torch.bfloat16).min)

    class Cache:  # the engine's slots, reduced: the past slots then the new query's
        def update_kv(self, kv, layer_idx):
            everything = torch.cat((past, kv.permute(0, 2, 3, 1, 4)), dim=3)  # (B, 2, G, 384, D)
            return everything[:, 0], everything[:, 1]

    chosen, sdpa = [], modeling.F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        chosen.append(SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask, kwargs.get("dropout_p", 0.0), False)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", recording)
    with sdpa_kernel(modeling._CUDNN_FIRST, set_priority=True):
        outs = [attention.attend(q, kv_new, mask, Cache(), None) for _ in range(20)]
    assert chosen and SDPBackend.CUDNN_ATTENTION not in chosen, chosen
    assert all(torch.equal(out, outs[0]) for out in outs[1:])

    k, v = (t.float().repeat_interleave(4, dim=1) for t in Cache().update_kv(kv_new, 0))  # (B, H, keys, D)
    scores = q.float().transpose(1, 2) @ k.transpose(-1, -2) / 128 ** 0.5 + mask.float()
    expected = (scores.softmax(-1) @ v).reshape(64, 1, 8 * 128)
    torch.testing.assert_close(outs[0].float(), expected, atol=2e-2, rtol=2e-2)
