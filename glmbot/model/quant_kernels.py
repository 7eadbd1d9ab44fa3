"""Weight-only int8 / int4 matrix products on CUDA for decode-sized batches (Triton).

A decode step reads every weight once, so its time is the weight bytes over the memory bandwidth:
int8 halves bf16's bytes, int4 quarters them, but only if the product reads the quantized weight
itself. PyTorch's own kernels do not do that at these shapes on an H200 (issue 24:
`_weight_int8pack_mm` 53 ms per decode step, `_weight_int4pack_mm` needs its own tile layout and
was 26.9 ms at 64 rows), and converting the weight to bf16 first reads it, writes twice its
bytes and reads those again. These kernels load tiles of glmbot's stored layout
(glmbot.model.quantization: int8 (out, in), or int4 packed two per byte, the even input column in
the high nibble, with one scale per output row), widen them to the activation's precision in
registers and apply the row scales to the fp32 sums: y = (x @ values^T) * scale.

- one row (batch-1 decode): `_gemv_kernel` on the CUDA cores, the weight read as int32 words and
  widened with integer ops (no conversion instruction per weight), many narrow column tiles so
  that enough weight bytes are in flight;
- 2 to `MAX_ROWS` rows: `_tensor_core_kernel`, one tile of all the rows (16 to 128) per program
  so each weight tile is read once; int4's two nibbles are interleaved into one (BN, BK) tile, so x
  is read contiguously and one tensor-core product runs per K step. (The word form, one strided
  tensor-core product per value of the word, was 5-8x slower at 16-64 rows on an H100.)

Per decode step's products (docs/PERFORMANCE.md, bf16 cuBLAS in the same run): on an H100 4.63 /
4.81 ms at 1 / 64 rows against int8 2.61 / 4.78 ms and int4 2.13 / 6.60 ms; on an H200 (before
the word gemv) 3.60 / 3.70 ms against int8 2.44 / 4.72 and int4 2.59 / 6.62.
Products of more rows (prefill, training) take the converted weight through cuBLAS
(compute-bound there). Tile sizes are Triton's autotuner's choice per (rows bucket, out, in,
bits); the engine's decode warm-up runs before any CUDA-graph capture, so tuning never happens
inside one.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# Rows up to which the kernels run (decode batches; also short prefills and small training
# batches); above it the converted weight through cuBLAS.
MAX_ROWS = 128


# CUDA device index -> compute capability, noted as quantized weights are made or moved there
# (glmbot.model.quantization), so that `available` runs no device query inside a compiled forward.
_CAPABILITY: dict[int, tuple[int, int]] = {}


def note_device(device: torch.device) -> None:
    if device.type == "cuda" and (device.index or 0) not in _CAPABILITY:
        _CAPABILITY[device.index or 0] = torch.cuda.get_device_capability(device)


def available(x: torch.Tensor) -> bool:
    """True where the kernels serve this product: CUDA with Triton, few rows, and a half dtype the
    GPU's tensor cores take in Triton (bf16 from compute capability 8.0, fp16 from 7.0); elsewhere
    the caller converts the weight."""
    if triton is None or not x.is_cuda or x.shape[0] > MAX_ROWS:
        return False
    need = {torch.bfloat16: (8, 0), torch.float16: (7, 0)}.get(x.dtype)
    return need is not None and _CAPABILITY.get(x.device.index or 0, (0, 0)) >= need


def rows_bucket(rows: int) -> int:
    """The next power of two: the tensor-core kernel's row tile comes from it (at least 16), so
    2..128 rows compile and tune for 4 tiles, not 127 row counts."""
    return 1 << max(0, rows - 1).bit_length()


if triton is not None:
    _TC_CONFIGS = [
        triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in ((16, 256, 4, 4), (32, 128, 4, 5), (32, 256, 4, 3), (64, 128, 4, 4), (64, 64, 4, 5),
                             (64, 128, 8, 3), (128, 64, 8, 4), (32, 64, 4, 6), (128, 128, 8, 3))
    ]

    @triton.autotune(configs=_TC_CONFIGS, key=["BM", "N", "K", "BITS"])
    @triton.jit
    def _tensor_core_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_qn, stride_ym,
                            BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """y[rows, cols] = (x[rows] @ values[cols]^T) * scale[cols] for a (BM, BN) tile: the weight
        tile widened in registers (int4: both nibbles interleaved into one (BN, BK) tile, so x is
        read contiguously) and multiplied on the tensor cores with fp32 sums."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        row_ok, col_ok = rows < M, cols < N
        STORED: tl.constexpr = BK * BITS // 8  # bytes of a weight row per K step
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)
            js = k0 * BITS // 8 + tl.arange(0, STORED)
            q = tl.load(q_ptr + cols[:, None] * stride_qn + js[None, :],
                        mask=col_ok[:, None] & (js < K * BITS // 8)[None, :], other=0)
            if BITS == 4:  # byte j: column 2j in the high nibble, 2j+1 in the low one, both signed
                q = tl.interleave(q >> 4, (q << 4).to(tl.int8) >> 4)
            acc = tl.dot(x, tl.trans(q.to(x.dtype)), acc)
        scale = tl.load(s_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        out = (acc * scale[None, :]).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])

    # One row: the stored weight read as int32 words (4 int8 or 8 int4 values each) and widened
    # with shifts, masks and the float "magic number" (0x4B000000 | v is the fp32 2**23 + v), so no
    # int-to-float conversion instruction runs per weight (H100: int4 2.60 -> 2.13 ms per decode
    # step's products, int8 2.75 -> 2.61; docs/PERFORMANCE.md).
    _GEMV_CONFIGS = [
        triton.Config({"BN": bn, "BW": bw}, num_warps=w, num_stages=s)
        for bn, bw, w, s in ((8, 128, 4, 3), (16, 64, 4, 4), (16, 128, 4, 3), (32, 64, 4, 4), (32, 128, 8, 3),
                             (16, 256, 8, 2), (64, 32, 4, 4), (8, 256, 4, 3), (4, 256, 4, 3), (4, 512, 8, 2))
    ]

    @triton.jit
    def _widen(words, i: tl.constexpr, BITS: tl.constexpr):
        """Value i of each word (the word already XORed with the sign bits) as fp32: the XOR
        makes each value's bits v + 2**(BITS-1), exact under 2**23, and the subtraction removes
        both offsets."""
        v = (words >> (BITS * i)) & ((1 << BITS) - 1)
        return (v | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + (1 << (BITS - 1)))

    @triton.jit
    def _column(i: tl.constexpr, BITS: tl.constexpr):
        """Input column of value i within its word (little-endian bytes): int8 bytes in order;
        an int4 byte holds the even column in its high nibble, so value i (bits 4i..4i+3) is
        column i ^ 1."""
        if BITS == 4:
            return i ^ 1
        else:
            return i

    @triton.autotune(configs=_GEMV_CONFIGS, key=["N", "WORDS", "BITS"])
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, WORDS, stride_wn,
                     BITS: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr):
        """One row: y[cols] = (values[cols] @ x) * scale[cols] on the CUDA cores for BN columns;
        products are summed elementwise in a (BN, BW) tile and reduced once at the end."""
        PER: tl.constexpr = 32 // BITS  # values per word
        FLIP: tl.constexpr = -2004318072 if BITS == 4 else -2139062144  # 0x88888888 / 0x80808080
        cols = tl.program_id(0) * BN + tl.arange(0, BN)
        col_ok = cols < N
        acc = tl.zeros((BN, BW), dtype=tl.float32)
        for w0 in range(0, WORDS, BW):
            ws = w0 + tl.arange(0, BW)
            ok = ws < WORDS
            words = tl.load(w_ptr + cols[:, None] * stride_wn + ws[None, :], mask=col_ok[:, None] & ok[None, :], other=0)
            words = words ^ FLIP
            for i in tl.static_range(PER):
                x = tl.load(x_ptr + ws * PER + _column(i, BITS), mask=ok, other=0.0).to(tl.float32)
                acc += _widen(words, i, BITS) * x[None, :]
        scale = tl.load(s_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + cols, (tl.sum(acc, axis=1) * scale).to(y_ptr.dtype.element_ty), mask=col_ok)


KERNELS = ("gemv", "tensor_cores")


def word_aligned(qdata: torch.Tensor) -> bool:
    """The gemv reads the stored rows as int32 words: their bytes must come in whole, aligned words
    (every official GLM shape does; others take the tensor-core kernel at one row)."""
    return qdata.stride(1) == 1 and qdata.shape[1] % 4 == 0 and qdata.stride(0) % 4 == 0 \
        and qdata.storage_offset() % 4 == 0


def weight_only_matmul(x2d: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int,
                       kernel: str | None = None) -> torch.Tensor:
    """(M, in) @ (values * scale).T -> (M, out) in x's dtype, reading the stored int8 / packed int4
    weight: one row on the CUDA cores, more on the tensor cores (`kernel` forces one, for benches)."""
    M, K = x2d.shape
    N = qdata.shape[0]
    if kernel not in (None, *KERNELS):
        raise ValueError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)} (or None to choose by rows)")
    if bits == 4 and K % 2:
        raise ValueError(f"int4 needs an even number of input columns, got {K}")
    x2d = x2d.contiguous()
    y = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    if kernel == "gemv" and (M != 1 or not word_aligned(qdata)):
        raise ValueError(f"the gemv kernel takes one row of whole int32 words, got {M} rows of {qdata.shape[1]} bytes")
    if kernel == "gemv" or (kernel is None and M == 1 and word_aligned(qdata)):
        words = qdata.view(torch.int32)
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BN"]),)](x2d, words, scale, y, N, words.shape[1],
                                                                 words.stride(0), BITS=bits)
        return y
    bm = min(max(rows_bucket(M), 16), 128)  # the tensor cores' smallest tile is 16 rows

    def grid(meta):
        return triton.cdiv(N, meta["BN"]), triton.cdiv(M, bm)

    _tensor_core_kernel[grid](x2d, qdata, scale, y, M, N, K, x2d.stride(0), qdata.stride(0), y.stride(0),
                              BITS=bits, BM=bm)
    return y
