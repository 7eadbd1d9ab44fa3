"""A literal, slow transcription of CHATGLM2_SPEC.md, used only to check glmbot's model.

It follows the official code's layout (sequence-first activations, expanded KV heads, an explicit
fp32 softmax, the official mask rules, the prefix passed as past key/values) and reads weights from
a plain state dict with the official names. Written from the spec, sharing no code with glmbot.
"""

from __future__ import annotations

import math

import torch


def rms_norm(x, weight, eps):
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (weight * (x * torch.rsqrt(variance + eps))).to(x.dtype)


def rope_cache(seq_len, head_dim, dtype):
    dim = head_dim // 2  # rotary on the first half of each head
    theta = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=dtype) / dim))
    seq_idx = torch.arange(seq_len, dtype=dtype)
    idx_theta = torch.outer(seq_idx, theta).float()
    cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)  # [seq, dim/2, 2]
    if dtype in (torch.float16, torch.bfloat16):
        cache = cache.to(dtype)
    return cache


def apply_rope(x, rope):
    # x: [sq, b, np, hn]; rope: [sq, b, rot_dim/2, 2]
    sq, b, np_, hn = x.shape
    rot_dim = rope.shape[-2] * 2
    x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    xs = x.reshape(sq, b, np_, rot_dim // 2, 2)
    rope = rope.view(sq, b, 1, rot_dim // 2, 2)
    out = torch.stack([
        xs[..., 0] * rope[..., 0] - xs[..., 1] * rope[..., 1],
        xs[..., 1] * rope[..., 0] + xs[..., 0] * rope[..., 1],
    ], -1).flatten(3)
    return torch.cat((out, x_pass), dim=-1)


def reference_logits(state, cfg, input_ids, attention_mask=None, prefix_flat=None):
    """Logits [b, s, vocab] of the full (non-incremental) forward.

    state: official-name state dict; prefix_flat: optional list (one per row) of [P_i, width]
    prefix-encoder outputs or None; rows with shorter prefixes are handled one by one so that
    each row is computed exactly as the official single-prefix model would.
    """
    if prefix_flat is not None:
        rows = []
        for r in range(input_ids.shape[0]):
            am = None if attention_mask is None else attention_mask[r:r + 1]
            rows.append(_forward(state, cfg, input_ids[r:r + 1], am, prefix_flat[r]))
        return torch.cat(rows)
    return _forward(state, cfg, input_ids, attention_mask, None)


def _forward(state, cfg, input_ids, attention_mask, prefix):
    L, H, G, D = cfg.num_layers, cfg.num_attention_heads, cfg.multi_query_group_num, cfg.kv_channels
    b, s = input_ids.shape
    dtype = state["transformer.embedding.word_embeddings.weight"].dtype
    P = 0 if prefix is None else prefix.shape[0]
    # Official positions: the tokenizer gives left pads position 0 and real tokens 0..n-1.
    if attention_mask is None:
        position_ids = torch.arange(s).expand(b, s)
    else:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # Official full mask from get_masks (True = masked).
    full = torch.ones(b, s, s).tril()
    if P:
        full = torch.cat((torch.ones(b, s, P), full), dim=-1)
        pad = torch.cat((torch.ones(b, P), attention_mask.float() if attention_mask is not None else torch.ones(b, s)), -1)
    else:
        pad = attention_mask.float() if attention_mask is not None else torch.ones(b, s)
    full = full * pad.unsqueeze(1)
    if attention_mask is not None and not P:  # official: only without past key/values
        full -= attention_mask.float().unsqueeze(-1) - 1
    masked = (full < 0.5).unsqueeze(1)  # [b, 1, s, P+s]

    hidden = state["transformer.embedding.word_embeddings.weight"][input_ids].transpose(0, 1)  # [s, b, h]
    rope = rope_cache(cfg.seq_length, D, dtype)[position_ids].transpose(0, 1)  # [s, b, D/4, 2]
    if P:
        kv = prefix.view(P, 2 * L, G, D).to(dtype)
    for l in range(L):
        pre = f"transformer.encoder.layers.{l}."
        ln = rms_norm(hidden, state[pre + "input_layernorm.weight"], cfg.layernorm_epsilon)
        mixed = ln @ state[pre + "self_attention.query_key_value.weight"].T + state[pre + "self_attention.query_key_value.bias"]
        q, k, v = mixed.split([H * D, G * D, G * D], dim=-1)
        q = apply_rope(q.view(s, b, H, D), rope)
        k = apply_rope(k.view(s, b, G, D), rope)
        v = v.view(s, b, G, D)
        if P:
            pk = kv[:, 2 * l].unsqueeze(1).expand(P, b, G, D)
            pv = kv[:, 2 * l + 1].unsqueeze(1).expand(P, b, G, D)
            k, v = torch.cat((pk, k), 0), torch.cat((pv, v), 0)
        # Expand the groups to all heads: head h uses group h // (H / G).
        k = k.unsqueeze(-2).expand(-1, -1, -1, H // G, -1).reshape(k.shape[0], b, H, D)
        v = v.unsqueeze(-2).expand(-1, -1, -1, H // G, -1).reshape(v.shape[0], b, H, D)
        qh, kh, vh = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, H, len, D]
        scores = (qh.float() @ kh.float().transpose(-1, -2)) / math.sqrt(D)
        scores = scores.masked_fill(masked, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(dtype)
        ctx = (probs @ vh).permute(2, 0, 1, 3).reshape(s, b, H * D)
        hidden = hidden + ctx @ state[pre + "self_attention.dense.weight"].T
        ln = rms_norm(hidden, state[pre + "post_attention_layernorm.weight"], cfg.layernorm_epsilon)
        a, c = (ln @ state[pre + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        hidden = hidden + (torch.nn.functional.silu(a) * c) @ state[pre + "mlp.dense_4h_to_h.weight"].T
    hidden = rms_norm(hidden, state["transformer.encoder.final_layernorm.weight"], cfg.layernorm_epsilon)
    return (hidden @ state["transformer.output_layer.weight"].T).transpose(0, 1)  # [b, s, vocab]
