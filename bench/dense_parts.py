"""One block's compiled dense parts in training, forward + backward, by shape handling (CUDA only).

    python bench/dense_parts.py [--batch 32 --T 120]

The trainer compiles `attention_inputs` (norm, QKV, rotary) and `block_outputs` (output
projection, norm, SwiGLU) once for all lengths (dynamic shapes). This times one layer's worth of
both, forward and backward, with the full-size shapes, as the trainer compiles them (batch and
length symbolic, the model's dimensions constants)
against compiling with every dimension symbolic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glmbot.model.modeling import (attention_inputs, block_outputs, rotary_cos_sin,  # noqa: E402
                                   rotary_inverse_backward, rotary_tables)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=120)
    args = ap.parse_args()
    B, T, h, H, G, D, F = args.batch, args.T, 4096, 32, 2, 128, 13696
    dev, dt = torch.device("cuda"), torch.bfloat16

    def w(*shape):
        return torch.randn(*shape, device=dev, dtype=dt) * 0.02

    weights = dict(norm1=torch.ones(h, device=dev, dtype=dt), qkv_w=w(H * D + 2 * G * D, h), qkv_b=w(H * D + 2 * G * D),
                   dense_w=w(h, H * D), norm2=torch.ones(h, device=dev, dtype=dt), up_w=w(2 * F, h), down_w=w(h, F))

    def layer(parts, x, delta, cos, sin):
        a_in, b_out = parts
        x, q, kv = a_in(x, delta, weights["norm1"], 1e-5, weights["qkv_w"], weights["qkv_b"], cos, sin, H, G, D,
                        rotary_inverse_backward)
        attn = q.flatten(-2) * 0.5 + kv[..., 0, :1, :].flatten(-2).sum(-1, keepdim=True)  # stands in for attention
        return b_out(x, attn, weights["dense_w"], None, weights["norm2"], 1e-5, weights["up_w"], None,
                     weights["down_w"], None, 0.0, True)

    def run(parts, shape):
        x = torch.randn(*shape, h, device=dev, dtype=dt, requires_grad=True)
        delta = torch.randn(*shape, h, device=dev, dtype=dt)
        pos = torch.arange(shape[1], device=dev).expand(*shape)
        c, s = rotary_tables(*rotary_cos_sin(pos, D // 4, dt), D)

        def step():
            out, mlp = layer(parts, x, delta, c, s)
            torch.autograd.backward((out, mlp), (torch.ones_like(out), torch.ones_like(mlp)))
        return step

    forms = {
        "dynamic=True: every dimension symbolic (before)": (dict(dynamic=True), (B, T)),
        "automatic dynamic: batch and length symbolic (compile_dense)": ({}, (B, T)),
    }
    print(f"B={B} T={T}: one layer's dense parts, forward + backward (ms)")
    print("| form | ms | kernels (first run compiles) |")
    print("|---|---|---|")
    for name, (options, shape) in forms.items():
        torch._dynamo.reset()
        parts = (torch.compile(attention_inputs, **options), torch.compile(block_outputs, **options))
        step = run(parts, shape)
        # two other lengths first, so dynamic forms are past their first specialisations
        for other in ((B, T + 8), (B - 2, T - 8)):
            run(parts, other)()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / 20 * 1e3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        top = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0 and "triton" in e.key),
                     key=lambda e: -e.self_device_time_total)[:4]
        kernels = "; ".join(f"{e.key[:60]} {e.self_device_time_total:.0f}us" for e in top)
        print(f"| {name} | {ms:.3f} | {kernels} |")


if __name__ == "__main__":
    main()
