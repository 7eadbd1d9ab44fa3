"""Weight-only int8 / int4 matrix products on CUDA for decode-sized batches (Triton).

A decode step reads every weight once, so its time is the weight bytes over the memory bandwidth:
int8 halves bf16's bytes, int4 quarters them, but only if the product reads the quantized weight
itself. PyTorch's own kernels do not do that at these shapes on an H200 (issue 24:
`_weight_int8pack_mm` 53 ms per decode step, `_weight_int4pack_mm` needs its own tile layout and
was 26.9 ms at 64 rows), and converting the weight to bf16 first reads it, writes twice its
bytes and reads those again. This kernel loads tiles of glmbot's stored layout
(glmbot.model.quantization: int8 (out, in), or int4 packed two per byte, the even input column in
the high nibble, with one scale per output row), widens them to the activation dtype in
registers, multiplies on the tensor cores with fp32 accumulation and applies the row scales to
the result: y = (x @ values^T) * scale. Products of more than `MAX_ROWS` rows (prefill, training)
take the converted weight through cuBLAS (compute-bound there; the kernel was not measured at
those sizes).

Tile sizes are Triton's autotuner's choice per (rows bucket, out, in, bits); the engine's decode
warm-up runs before any CUDA-graph capture, so tuning never happens inside one.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# Rows up to which the kernel runs (decode batches; also short prefills and small training
# batches). H200 (docs/PERFORMANCE.md): int8 beat converting at every size measured up to 128
# (6.6 vs 19.0 ms of products per step at 128); int4's whole step at 128 rows, 33.7 ms, only ties
# the converted products alone (33.8 ms).
MAX_ROWS = 128


# CUDA device index -> compute capability, noted as quantized weights are made or moved there
# (glmbot.model.quantization), so that `available` runs no device query inside a compiled forward.
_CAPABILITY: dict[int, tuple[int, int]] = {}


def note_device(device: torch.device) -> None:
    if device.type == "cuda" and (device.index or 0) not in _CAPABILITY:
        _CAPABILITY[device.index or 0] = torch.cuda.get_device_capability(device)


def available(x: torch.Tensor) -> bool:
    """True where the kernel serves this product: CUDA with Triton, few rows, and a half dtype the
    GPU's tensor cores take in Triton (bf16 from compute capability 8.0, fp16 from 7.0); elsewhere
    the caller converts the weight."""
    if triton is None or not x.is_cuda or x.shape[0] > MAX_ROWS:
        return False
    need = {torch.bfloat16: (8, 0), torch.float16: (7, 0)}.get(x.dtype)
    return need is not None and _CAPABILITY.get(x.device.index or 0, (0, 0)) >= need


def rows_bucket(rows: int) -> int:
    """The autotuner's key for M: the next power of two (so 1..128 rows tune 8 times, not 128)."""
    return 1 << max(0, rows - 1).bit_length()


if triton is not None:
    _CONFIGS = [
        triton.Config({"BM": 16, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in ((32, 128, 4, 4), (64, 128, 4, 4), (32, 256, 4, 3), (64, 256, 4, 3),
                             (128, 128, 4, 4), (16, 256, 4, 4), (32, 512, 4, 3), (64, 512, 8, 3))
    ] + [
        triton.Config({"BM": bm, "BN": bn, "BK": 64}, num_warps=w, num_stages=4)
        for bm, bn, w in ((32, 64, 4), (64, 64, 4), (64, 128, 8), (128, 128, 8))
    ]

    @triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "BITS"])  # int4 tiles want other sizes
    @triton.jit
    def _weight_only_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, K, M_BUCKET,
                            stride_xm, stride_qn, stride_ym,
                            BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        row_ok, col_ok = rows < M, cols < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if BITS == 8:
            for k0 in range(0, K, BK):
                ks = k0 + tl.arange(0, BK)
                k_ok = ks < K
                x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(q_ptr + cols[None, :] * stride_qn + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0)
                acc = tl.dot(x, w.to(x.dtype), acc)
        else:
            HALF: tl.constexpr = BK // 2
            for k0 in range(0, K // 2, HALF):  # k0 counts packed bytes: columns 2*k0 .. 2*k0 + BK
                js = k0 + tl.arange(0, HALF)
                j_ok = js < K // 2
                packed = tl.load(q_ptr + cols[None, :] * stride_qn + js[:, None], mask=col_ok[None, :] & j_ok[:, None], other=0)
                high = packed >> 4                      # even input columns (arithmetic shift keeps the sign)
                low = (packed << 4).to(tl.int8) >> 4    # odd input columns
                xm = row_ok[:, None] & j_ok[None, :]
                x_even = tl.load(x_ptr + rows[:, None] * stride_xm + 2 * js[None, :], mask=xm, other=0.0)
                x_odd = tl.load(x_ptr + rows[:, None] * stride_xm + 2 * js[None, :] + 1, mask=xm, other=0.0)
                acc = tl.dot(x_even, high.to(x_even.dtype), acc)
                acc = tl.dot(x_odd, low.to(x_odd.dtype), acc)
        scale = tl.load(s_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        out = (acc * scale[None, :]).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])


def weight_only_matmul(x2d: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """(M, in) @ (values * scale).T -> (M, out) in x's dtype, reading the stored int8 / packed int4 weight."""
    M, K = x2d.shape
    N = qdata.shape[0]
    if bits == 4 and K % 2:
        raise ValueError(f"int4 needs an even number of input columns, got {K}")
    x2d = x2d.contiguous()
    y = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)

    def grid(meta):
        return triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"])

    _weight_only_kernel[grid](x2d, qdata, scale, y, M, N, K, rows_bucket(M),
                              x2d.stride(0), qdata.stride(0), y.stride(0), BITS=bits)
    return y
