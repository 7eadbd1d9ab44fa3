"""Does pulling a layer's next weights into L2 while attention runs shorten the decode step? (CUDA only)

    python bench/l2_prefetch.py [--rows 64] [--kv 256]

A decode step reads 12.5 GB of weights through skinny matmuls that run at ~1.1x the copy floor; each
starts cold after kernels that read less than it (rotary, the attention over the KV slots, norms;
attention still reads ~20 MiB of keys and values a layer at 64 rows, printed below beside the L2 size). This bench builds 28 layers of ChatGLM2-6B's shape as a stand-in for
the step (RMSNorm, QKV, grouped SDPA over `--kv` cached keys, dense, RMSNorm, h->4h, SwiGLU, 4h->h,
the residual adds), captures it in one CUDA graph, and times it with and without a small kernel
launched right after each QKV product that asks the memory system to bring the layer's dense weight
(and optionally the head of its h->4h weight) into L2, or before each 4h->h product for the head of
the next layer's QKV weight (to fill that product's tail). The kernel only issues requests; the matmuls
read the same weights either way, so results are bitwise equal (checked, eagerly). Each kind runs inline
(on the step's stream, so attention waits for the requests) and on a side stream forked there and
joined at the layer's end; the request kernels are also timed alone. Ways to ask:

- `line`: one `prefetch.global.L2` per 128-byte line, spread over the whole grid (`line_last`: with
  the evict_last hint, so the attention's KV reads do not push the lines out first);
- `bulk`: `cp.async.bulk.prefetch.L2` of 16 KB chunks (Hopper's bulk copy engine);
- `load`: ordinary loads summed into a dummy (holds SMs until the bytes arrive).

Reported: ms per step (graph replay) against the same graph without requests, in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gemm_shapes import time_us  # noqa: E402
from serving_bench import copy_bandwidth  # noqa: E402

HIDDEN, FFN, HEADS, GROUPS, HEAD_DIM, LAYERS = 4096, 13696, 32, 2, 128, 28
CHUNK = 16384  # bytes per bulk request


# The request each kind issues for one address $1 (in the tensor while $2 < $3, the byte count)
ASKS = {"line": "prefetch.global.L2 [$1]", "line_last": "prefetch.global.L2::evict_last [$1]",
        "bulk": f"cp.async.bulk.prefetch.L2.global [$1], {CHUNK}"}


@triton.jit
def _ask_kernel(base, nbytes, sink, ASM: tl.constexpr, STEP: tl.constexpr, BLOCK: tl.constexpr):
    """BLOCK requests a program, one per STEP bytes from base, each the instruction in ASM."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64) * STEP
    ok = tl.inline_asm_elementwise(ASM, "=r,l,l,l", [base + offs, offs, tl.full([BLOCK], nbytes, tl.int64)],
                                   dtype=tl.int32, is_pure=False, pack=1)
    tl.store(sink + tl.program_id(0), tl.sum(ok, 0))


@triton.jit
def _load_prefetch(base, n_words, sink, BLOCK: tl.constexpr):
    pid, progs = tl.program_id(0), tl.num_programs(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(pid * BLOCK, n_words, progs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(base + offs, mask=offs < n_words, other=0)
    tl.store(sink + pid, tl.sum(acc, 0))


def requester(mode: str, sink: torch.Tensor, load_programs: int):
    def ask(tensor: torch.Tensor, nbytes: int) -> None:
        nbytes = min(nbytes, tensor.numel() * tensor.element_size())
        if mode in ASKS:
            step = CHUNK if mode == "bulk" else 128
            if mode == "bulk":
                nbytes -= nbytes % CHUNK  # whole chunks only: a request may not run past the tensor
            if nbytes <= 0:
                return
            asm = "{ .reg .pred p; setp.lt.s64 p, $2, $3; @p " + ASKS[mode] + "; mov.u32 $0, 0; }"
            _ask_kernel[(triton.cdiv(triton.cdiv(nbytes, step), 256),)](tensor.view(torch.uint8), nbytes, sink, asm,
                                                                       step, BLOCK=256)
        elif mode == "load":
            _load_prefetch[(load_programs,)](tensor.view(torch.int32), nbytes // 4, sink, BLOCK=4096)
    return ask


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


def build(rows: int, kv: int, device: torch.device):
    bf = torch.bfloat16
    layers = [dict(qkv=torch.randn(HIDDEN + 2 * GROUPS * HEAD_DIM, HIDDEN, device=device, dtype=bf) * 0.02,
                   dense=torch.randn(HIDDEN, HIDDEN, device=device, dtype=bf) * 0.02,
                   up=torch.randn(2 * FFN, HIDDEN, device=device, dtype=bf) * 0.02,
                   down=torch.randn(HIDDEN, FFN, device=device, dtype=bf) * 0.02,
                   n1=torch.ones(HIDDEN, device=device, dtype=bf), n2=torch.ones(HIDDEN, device=device, dtype=bf),
                   k=torch.randn(rows, GROUPS, kv, HEAD_DIM, device=device, dtype=bf),
                   v=torch.randn(rows, GROUPS, kv, HEAD_DIM, device=device, dtype=bf)) for _ in range(LAYERS)]
    x = torch.randn(rows, HIDDEN, device=device, dtype=bf)
    return layers, x


def step(layers, x, ask, side: torch.cuda.Stream | None, dense_bytes: int, up_bytes: int,
         next_bytes: int) -> torch.Tensor:
    """The stand-in step; `ask` (None: no requests) runs on `side` where given: forked from the main
    stream where the requests are made, joined at the end of each layer (parallel branches in the graph)."""
    rows, main = x.shape[0], None if side is None else torch.cuda.current_stream()

    def request(tensor: torch.Tensor, nbytes: int) -> None:
        if side is None:
            return ask(tensor, nbytes)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            ask(tensor, nbytes)

    for i, p in enumerate(layers):
        qkv = F.linear(rms(x, p["n1"]), p["qkv"])
        if ask is not None and dense_bytes:
            request(p["dense"], dense_bytes)
            if up_bytes:
                request(p["up"], up_bytes)
        q = qkv[:, :HIDDEN].view(rows, HEADS, 1, HEAD_DIM)
        att = F.scaled_dot_product_attention(q, p["k"], p["v"], enable_gqa=True)
        x = x + F.linear(att.reshape(rows, HIDDEN), p["dense"])
        a, b = F.linear(rms(x, p["n2"]), p["up"]).chunk(2, -1)
        if ask is not None and next_bytes and i + 1 < len(layers):  # beside the 4h->h product, for its tail
            request(layers[i + 1]["qkv"], next_bytes)
        x = x + F.linear(F.silu(a) * b, p["down"])
        if side is not None:
            main.wait_stream(side)
    return x


def describe(variant: tuple) -> str:
    mode, on_side, dense_bytes, up_bytes, next_bytes = variant
    mib = 1 << 20
    parts = [f"dense {dense_bytes // mib} MiB" if dense_bytes else "", f"h->4h {up_bytes // mib} MiB" if up_bytes else "",
             f"next QKV {next_bytes // mib} MiB beside 4h->h" if next_bytes else ""]
    return "none" if mode == "none" else (f"{mode}{', side stream' if on_side else ''}: "
                                          + " + ".join(p for p in parts if p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--kv", type=int, default=320, help="cached keys each row attends to (prefix + tokens)")
    parser.add_argument("--rounds", type=int, default=3, help="times the whole comparison is repeated")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    layers, x = build(args.rows, args.kv, device)
    sink = torch.zeros(1 << 16, dtype=torch.int32, device=device)
    weights = sum(t.numel() * 2 for p in layers for n, t in p.items() if n in ("qkv", "dense", "up", "down"))
    kv_bytes = layers[0]["k"].nbytes + layers[0]["v"].nbytes
    bw = copy_bandwidth(device)  # bytes read + written per second
    mib = 1 << 20
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"L2 {torch.cuda.get_device_properties(device).L2_cache_size / mib:.0f} MiB; {args.rows} rows, KV "
          f"{args.kv} ({kv_bytes / mib:.0f} MiB read by a layer's attention); layer weights {weights / 1e9:.2f} GB, "
          f"floor {weights / bw * 1e3:.2f} ms at {bw / 1e12:.2f} TB/s")
    for mode in ("line", "line_last", "load", "bulk"):  # a request kernel alone: does it return at once?
        try:
            us = time_us(lambda: requester(mode, sink, load_programs=16)(layers[0]["dense"], 32 * mib))
            print(f"request kernel alone, {mode}, 32 MiB: {us:.1f} us")
        except Exception as error:
            print(f"request kernel alone, {mode}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    side = torch.cuda.Stream()
    # (kind, on a side stream, dense bytes and h->4h bytes asked after each QKV product, next layer's
    # QKV bytes asked before each 4h->h product). The KV reads of attention pass through the same L2.
    variants = [("none", False, 0, 0, 0)]
    for mode in ("line", "line_last", "load", "bulk"):
        for on_side in (False, True):
            variants += [(mode, on_side, 8 * mib, 0, 0), (mode, on_side, 16 * mib, 0, 0), (mode, on_side, 32 * mib, 0, 0)]
    variants += [("line_last", True, 16 * mib, 8 * mib, 0), ("line_last", True, 0, 0, 8 * mib),
                 ("line_last", True, 16 * mib, 0, 8 * mib)]
    results: dict[tuple, list[float]] = {}
    reference = None
    # bulk after every round of the others: a fault there can leave the CUDA context unusable
    for group in ([v for v in variants if v[0] != "bulk"], [v for v in variants if v[0] == "bulk"]):
        for _ in range(args.rounds):
            for variant in group:
                mode = variant[0]
                ask = None if mode == "none" else requester(mode, sink, load_programs=16)
                stream = side if variant[1] else None
                times = results.setdefault(variant, [])
                try:
                    ms = time_us(lambda: step(layers, x, ask, stream, *variant[2:])) / 1e3  # graph replays
                    out = step(layers, x, ask, stream, *variant[2:])
                    torch.cuda.synchronize()
                    reference = out if reference is None else reference
                    if not torch.equal(out, reference):
                        raise AssertionError("the result changed")
                except Exception as error:  # an instruction this card or Triton lacks, a changed result: say so, go on
                    print(f"{describe(variant)}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                    continue
                times.append(ms)
                print(f"{describe(variant)}: {ms:.3f} ms")
    base = min(results["none", False, 0, 0, 0])
    print("\n| requests | ms per step (rounds) | best vs none |")
    print("|---|---|---|")
    for variant, times in results.items():
        shown = " / ".join(f"{t:.3f}" for t in times) or "failed"
        rel = f"{min(times) / base - 1:+.1%}" if times else "-"
        print(f"| {describe(variant)} | {shown} | {rel} |")


if __name__ == "__main__":
    main()
