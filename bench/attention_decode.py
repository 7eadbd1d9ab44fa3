"""Decode attention over the serving engine's KV slots, by formulation (CUDA only).

    python bench/attention_decode.py [--batch 64 --slots 336]

One query per row, 32 query heads over 2 KV groups, keys and values read in place from the slot
buffer (R, 2, G, S + 1, D), each row seeing its slots [0, limit) through an additive mask.
Prints microseconds per layer for each way of running it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, reps: int = 200) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()  # as the engine runs it: inside a CUDA graph, no launch cost
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps // 10):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slots", type=int, default=336)
    args = ap.parse_args()
    B, S, H, G, D = args.batch, args.slots, 32, 2, 128
    dev, dt = torch.device("cuda"), torch.bfloat16
    buf = torch.randn(B, 2, G, S + 1, D, device=dev, dtype=dt)
    k, v = buf[:, 0, :, :S], buf[:, 1, :, :S]  # (B, G, S, D) views, as SlotCache.update_kv returns them
    q = torch.randn(B, 1, H, D, device=dev, dtype=dt)
    limit = torch.randint(S // 2, S, (B,), device=dev)
    visible = torch.arange(S, device=dev) < limit[:, None]
    mask = torch.zeros(B, 1, 1, S, dtype=dt, device=dev).masked_fill_(~visible[:, None, None], torch.finfo(dt).min)
    folded = q.view(B, G, H // G, D)
    scale = D ** -0.5

    def manual(qf, k, v, mask):
        scores = (qf @ k.transpose(-1, -2)).float() * scale + mask  # (B, G, 16, S)
        return (scores.softmax(-1).to(v.dtype) @ v)

    compiled_manual = torch.compile(manual, dynamic=False)
    ways = {
        "folded heads, SDPA default (glmbot)": lambda: F.scaled_dot_product_attention(folded, k, v, attn_mask=mask),
        "folded heads, cuDNN, mask expanded to 16 queries": lambda: F.scaled_dot_product_attention(
            folded, k, v, attn_mask=mask.expand(B, 1, H // G, S)),
        "32 heads, grouped KV, cuDNN": lambda: _cudnn(lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True)),
        "folded heads, efficient": lambda: _backend(SDPBackend.EFFICIENT_ATTENTION, lambda: F.scaled_dot_product_attention(
            folded, k, v, attn_mask=mask)),
        "folded heads, matmul + softmax (eager)": lambda: manual(folded, k, v, mask),
        "folded heads, matmul + softmax (compiled)": lambda: compiled_manual(folded, k, v, mask),
    }
    print(f"B={B} slots={S} H={H} G={G} D={D}; KV read per layer {2 * B * G * S * D * 2 / 1e6:.1f} MB")
    print("| way | us per layer | max |out - glmbot| |")
    print("|---|---|---|")
    reference = None
    for name, fn in ways.items():
        try:
            with torch.no_grad():
                out = fn().reshape(B, H * D).float()
                us = timed(fn)
        except Exception as exc:  # noqa: BLE001 - a formulation that fails here is a result too
            print(f"| {name} | failed: {str(exc).splitlines()[0][:90]} | |")
            continue
        reference = out if reference is None else reference
        print(f"| {name} | {us:.1f} | {(out - reference).abs().max().item():.3g} |")


def _cudnn(fn):
    return _backend(SDPBackend.CUDNN_ATTENTION, fn)


def _backend(backend, fn):
    with sdpa_kernel(backend):
        return fn()


if __name__ == "__main__":
    main()
