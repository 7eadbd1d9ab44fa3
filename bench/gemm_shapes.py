"""How fast the decode step's matmuls run at serving batch sizes, per kernel choice (CUDA only).

    python bench/gemm_shapes.py                 # cuBLAS, cuBLASLt
    python bench/gemm_shapes.py --autotune      # also inductor max-autotune (Triton templates)
    python bench/gemm_shapes.py --train 3622,4096   # training shapes instead: TFLOP/s at M tokens
    python bench/gemm_shapes.py --quantized     # int8 / int4 weights: glmbot's kernel vs converting them

A decode step is a handful of skinny matmuls (M = batch rows) over all 12.5 GB of weights, so
each should run at the copy bandwidth. Every timing cycles through enough copies of the weight
to defeat the 50 MB L2 cache (as 28 distinct layers do) and replays the calls from a CUDA graph
(no launch overhead). Reported: microseconds per call and weight bytes read per second vs the
measured device-to-device copy bandwidth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_bench import copy_bandwidth  # noqa: E402

# (name, out features, in features) of ChatGLM2-6B's per-layer matmuls and the output layer.
SHAPES = [("query_key_value", 4608, 4096), ("dense", 4096, 4096), ("dense_h_to_4h", 27392, 4096),
          ("dense_4h_to_h", 4096, 13696), ("output_layer", 65024, 4096)]


def time_us(fn, calls: int = 1) -> float:
    """Mean microseconds per fn() over CUDA-graph replays of `calls` consecutive calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) * 1e3 / (10 * calls)


def train_table(rows: list[int]) -> None:
    """Prefix training's matmuls at micro-batch token counts M: the forward (M x in -> M x out) and
    the backward's input gradient (M x out -> M x in; frozen weights get none), in TFLOP/s."""
    print("| matmul | M | forward TFLOP/s | input-gradient TFLOP/s |")
    print("|---|---|---|---|")
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
            rates = []
            for fn in (lambda: F.linear(x, w), lambda: g @ w):
                for _ in range(3):
                    fn()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(20):
                    fn()
                end.record()
                torch.cuda.synchronize()
                rates.append(2 * m * n * k / (begin.elapsed_time(end) / 20 * 1e-3) / 1e12)
            print(f"| {name} {n}x{k} | {m} | {rates[0]:.0f} | {rates[1]:.0f} |")


def quantized_table(rows: list[int], kernels: list[tuple[int, str]]) -> None:
    """The decode step's products with int8 / int4 weights (glmbot's stored layout): glmbot's
    weight-only Triton kernels (glmbot.model.quant_kernels: CUDA-core gemv for one row, tensor
    cores for more) against bf16 cuBLAS, the baseline of the same run; with each kernel's largest
    error against the dequantized weight's product. (Converting the weight for cuBLAS instead,
    what the model does above quant_kernels.MAX_ROWS, took 5-9x bf16 here: docs/PERFORMANCE.md.)
    The last rows add one decode step's products up (28 layers; the output layer stays bf16)."""
    from glmbot.model.quant_kernels import weight_only_matmul
    from glmbot.model.quantization import dequantize, pack_int4, quantize_rows

    print(f"{torch.cuda.get_device_name()}, torch {torch.version.__version__}")
    print("| matmul | M | bf16 cuBLAS us | " + " | ".join(f"int{b} {k} us" for b, k in kernels) + " | max rel. error |")
    print("|---|---|---|" + "---|" * len(kernels) + "---|")
    step = {m: [0.0] * (1 + len(kernels)) for m in rows}
    for name, n, k in SHAPES:
        layers = 1 if name == "output_layer" else 28
        copies = max(2, -(-(256 << 20) // (n * k)))  # int8 copies > 5x the L2 cache
        w = torch.randn(n, k, device="cuda") * 0.02
        quant = {}
        for bits in (8, 4):
            values, scale = quantize_rows(w, bits)
            q = pack_int4(values) if bits == 4 else values
            quant[bits] = ([q.clone() for _ in range(copies)], scale.to(torch.bfloat16), dequantize(q, scale, bits, torch.float32))
        dense = [w.to(torch.bfloat16) for _ in range(max(2, copies // 2))]
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            us = [time_us(lambda: [F.linear(x, d) for d in dense]) / len(dense)]
            error = 0.0
            for bits, kernel in kernels:
                if kernel == "gemv" and m != 1:
                    us.append(float("nan"))
                    continue
                qs, scale, ref = quant[bits]
                got = weight_only_matmul(x, qs[0], scale, bits, kernel=kernel).float()
                want = x.float() @ ref.t()
                error = max(error, (got - want).abs().max().item() / want.abs().max().item())
                us.append(time_us(lambda: [weight_only_matmul(x, q, scale, bits, kernel=kernel) for q in qs]) / copies)
            if name == "output_layer":
                us[1:] = [us[0] if u == u else u for u in us[1:]]  # stays bf16
            for i, t in enumerate(us):
                step[m][i] += t * layers
            print(f"| {name} {n}x{k} | {m} | " + " | ".join("-" if t != t else f"{t:.1f}" for t in us) +
                  f" | {error:.4f} |", flush=True)
        del quant, dense
    for m in rows:
        print(f"| **decode step products** | {m} | " + " | ".join("-" if t != t else f"{t / 1e3:.2f} ms" for t in step[m])
              + " | |")  # '-': the gemv takes one row only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,16,64,128", help="batch rows (M) to time")
    ap.add_argument("--autotune", action="store_true", help="also time torch.compile(mode='max-autotune-no-cudagraphs')")
    ap.add_argument("--autotune-rows", default="1,64")
    ap.add_argument("--train", default="", help="instead, training token counts M to time (e.g. 3622,3840,4096)")
    ap.add_argument("--quantized", action="store_true", help="int8 / int4 weights: glmbot's kernel vs converting them")
    ap.add_argument("--kernels", default="8:gemv,8:tensor_cores,4:gemv,4:tensor_cores",
                    help="with --quantized: bits:kernel pairs to time (kernels: glmbot.model.quant_kernels.KERNELS)")
    args = ap.parse_args()
    if args.quantized:
        kernels = [(int(b), k) for b, k in (c.split(":") for c in args.kernels.split(","))]
        return quantized_table([int(r) for r in args.rows.split(",")], kernels)
    if args.train:
        return train_table([int(r) for r in args.train.split(",")])
    rows = [int(r) for r in args.rows.split(",")]
    bandwidth = copy_bandwidth(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.version.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print("| matmul | M | kernel | us | weight TB/s | of copy bw |")
    print("|---|---|---|---|---|---|")
    for name, n, k in SHAPES:
        nbytes = n * k * 2
        copies = max(2, -(-(256 << 20) // nbytes))  # > 5x the L2 cache in total
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            kernels = [("cuBLAS", "cublas", F.linear), ("cuBLASLt", "cublaslt", F.linear)]
            if args.autotune and str(m) in args.autotune_rows.split(","):
                kernels.append(("max-autotune", "cublas",
                                torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)))
            for label, library, linear in kernels:
                torch.backends.cuda.preferred_blas_library(library)
                try:
                    us = time_us(lambda: [linear(x, w) for w in weights], calls=1) / copies
                except Exception as exc:  # noqa: BLE001 - a kernel choice this build lacks: report it, go on
                    print(f"| {name} | {m} | {label} | failed: {type(exc).__name__}: {str(exc)[:80]} | | |")
                    continue
                rate = nbytes / us * 1e6
                print(f"| {name} {n}x{k} | {m} | {label} | {us:.1f} | {rate / 1e12:.2f} | {rate / bandwidth:.0%} |")
        torch.backends.cuda.preferred_blas_library("cublas")
        del weights


if __name__ == "__main__":
    main()
