"""Prefix-training attention, forward + backward, by SDPA backend (CUDA only).

    python bench/attention_train.py [--batch 32 --T 120 --P 128]
    python bench/attention_train.py --device cpu --batch 2 --T 8 --P 4   # checks the script

The trainer's attention: 32 query heads over 2 KV groups, every query sees the whole prefix and
the earlier tokens (lower-right causal over P + T keys), gradients to q, k and v (the prefix's
gradient flows through k and v). Prints ms per layer for each way of running it, and how far its output and gradients are from
the trainer's way (a backend whose gradients differ by more than bf16 rounding is not a candidate).
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps * 1e3


def varlen_causal_gqa(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """varlen_attn, lower-right causal, grouped KV, across the releases' two signatures."""
    if varlen_attn is None:
        raise RuntimeError(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    params = inspect.signature(varlen_attn).parameters
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=120)
    ap.add_argument("--P", type=int, default=128)
    ap.add_argument("--device", default="cuda", help="cpu only checks the script (tiny timings, few backends)")
    args = ap.parse_args()
    B, T, P, H, G, D = args.batch, args.T, args.P, 32, 2, 128
    dev, dt = torch.device(args.device), torch.bfloat16
    # Layouts as the model has them: q a transposed view of (B, T, H, D); k, v (B, G, P + T, D).
    q = torch.randn(B, T, H, D, device=dev, dtype=dt).transpose(1, 2).requires_grad_()
    k = torch.randn(B, G, P + T, D, device=dev, dtype=dt).requires_grad_()
    v = torch.randn(B, G, P + T, D, device=dev, dtype=dt).requires_grad_()
    grad = torch.randn(B, H, T, D, device=dev, dtype=dt)
    bias = causal_lower_right(T, P + T)
    allowed = torch.ones(T, P + T, dtype=torch.bool, device=dev).tril(P)
    additive = torch.zeros(1, 1, T, P + T, dtype=dt, device=dev).masked_fill_(~allowed, torch.finfo(dt).min)
    rep = H // G

    def expand(t):
        return t.repeat_interleave(rep, dim=1)

    def packed():
        """Packed rows (no padding) through varlen flash: row b's keys are its prefix then its tokens."""
        out = varlen_causal_gqa(q.transpose(1, 2).reshape(B * T, H, D), k.transpose(1, 2).reshape(B * (P + T), G, D),
                                v.transpose(1, 2).reshape(B * (P + T), G, D), cu_q, cu_k, T, P + T)
        return out.view(B, T, H, D).transpose(1, 2)

    # Folded heads: each KV group's H/G query heads become query rows (row t*H/G + h of group g is
    # token t, head g*H/G + h), a plain G-head attention whose mask repeats each token's row H/G times.
    folded_mask = additive.repeat_interleave(rep, dim=2)  # (1, 1, T*H/G, P+T)

    def folded():
        qf = q.transpose(1, 2).reshape(B, T, G, rep, D).transpose(1, 2).reshape(B, G, T * rep, D)
        out = F.scaled_dot_product_attention(qf, k, v, attn_mask=folded_mask)
        return out.view(B, G, T, rep, D).transpose(1, 2).reshape(B, T, H, D).transpose(1, 2)

    cu_q = torch.arange(0, B * T + 1, T, device=dev, dtype=torch.int32)
    cu_k = torch.arange(0, B * (P + T) + 1, P + T, device=dev, dtype=torch.int32)
    ways = {
        "flash, lower-right CausalBias, grouped KV (glmbot)":
            (None, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)),
        "flash, lower-right CausalBias, expanded KV":
            (None, lambda: F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=bias)),
        "cuDNN, additive mask, expanded KV":
            (SDPBackend.CUDNN_ATTENTION, lambda: F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=additive)),
        "cuDNN, additive mask, grouped KV":
            (SDPBackend.CUDNN_ATTENTION, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive, enable_gqa=True)),
        "efficient, additive mask, expanded KV":
            (SDPBackend.EFFICIENT_ATTENTION, lambda: F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=additive)),
        "cuDNN, additive mask, folded heads": (SDPBackend.CUDNN_ATTENTION, folded),
        "efficient, additive mask, folded heads": (SDPBackend.EFFICIENT_ATTENTION, folded),
        "flash varlen, packed rows, grouped KV": (None, packed),
        "math, additive mask, grouped KV":
            (SDPBackend.MATH, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive, enable_gqa=True)),
    }
    reference = None
    print(f"B={B} T={T} P={P} H={H} G={G} D={D}; differences are max abs against the first row, whose "
          "gradients' max abs values are given in its row")
    print("| way | forward ms | forward + backward ms | out diff | dq diff | dk diff | dv diff |")
    print("|---|---|---|---|---|---|---|")
    for name, (backend, fn) in ways.items():
        def fwd():
            with torch.no_grad():
                return fn()

        def fwd_bwd():
            out = fn()
            torch.autograd.grad(out, (q, k, v), grad)
        try:
            with sdpa_kernel(backend) if backend else torch.enable_grad():
                out = fwd()
                grads = torch.autograd.grad(fn(), (q, k, v), grad)  # the prefix learns through dk, dv
                f, fb = timed(fwd), timed(fwd_bwd)
        except Exception as exc:  # noqa: BLE001 - a backend that refuses this shape is a result too
            print(f"| {name} | unsupported: {str(exc).splitlines()[0][:80]} | | | | | |")
            continue
        if reference is None:
            reference = (out, *grads)
            diffs = ["0"] + [f"0 (max {g.float().abs().max().item():.3g})" for g in grads]
        else:
            diffs = [f"{(a.float() - b.float()).abs().max().item():.3g}" for a, b in zip((out, *grads), reference)]
        print(f"| {name} | {f:.3f} | {fb:.3f} | " + " | ".join(diffs) + " |")


if __name__ == "__main__":
    main()
