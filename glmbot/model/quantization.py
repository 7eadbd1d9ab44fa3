"""Quantized base weights (int8, int4): a layer swap at load time.

The frozen base's four linear products of every block (query_key_value, dense, dense_h_to_4h,
dense_4h_to_h; the output layer on request) get a `RowQuantizedWeight` instead of their float
weight. It keeps the official `QuantizedLinear` layout: int8 values (out, in), or int4 values
packed two per byte (out, in/2), and one scale per output row, so an official int4/int8
checkpoint loads into it as stored. The model code does not change: its blocks call
`F.linear(x, weight, bias)`, which the weight's class answers with `quantized_linear`.
Embeddings, norms and the prefix stay in full precision; an unquantized base never imports this.

Why not a library's quantized tensor (measured, docs/PERFORMANCE.md "Quantized base"): torchao
0.18 has no packed int4 format that runs on a CPU (its int4 CPU path stores one value per byte),
its int8 weight's backward keeps a float copy of each weight for the backward pass, and once
installed transformers imports it at every start (+1.1 s and warnings on stderr, quantized or
not); bitsandbytes' 4-bit formats (NF4/FP4, blockwise) cannot hold the official per-row int4
without requantizing it. The product is one `torch.library` op, `glmbot::quantized_matmul`
(torch.compile keeps it whole): on the CPU PyTorch's `torch._weight_int8pack_mm` (few rows) or a
converted weight; on CUDA glmbot's Triton weight-only kernels for products of up to
`quant_kernels.MAX_ROWS` rows (decode batches, short prefills, small training batches) and cuBLAS
on a converted weight above that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glmbot.errors import CheckpointMismatchError, QuantizationError
from glmbot.model import quant_kernels

QUANTIZATIONS = ("none", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
# The official quantize() swaps exactly these products of every block (ChatGLM2-6B quantization.py).
TARGETS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
OUTPUT_LAYER = "transformer.output_layer"
DEVICES = ("cpu", "cuda")
SCALE_SUFFIX = ".weight_scale"


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], (out, in) -> (out, in/2) int8, two per byte.

    Nibble order of the official kernels (chatglm-6b-int4 `quantization_kernels_parallel.c`,
    `compress_int4_weight` / `extract_int4_weight_to_float`, mirrored at
    greensheng/chatglm-6b): column 2j in the high nibble, column 2j+1 in the low nibble, each a
    signed 4-bit value (read back by an arithmetic shift). tests/test_quantization.py pins it.
    """
    v = values.to(torch.int16)
    return ((v[:, 0::2] << 4) | (v[:, 1::2] & 0x0F)).to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in/2) int8 -> (out, in) int8 values in [-8, 7] (see `pack_int4`)."""
    high = packed >> 4  # arithmetic shift: the sign of the high nibble comes along
    low = (packed << 4) >> 4
    return torch.stack((high, low), dim=-1).flatten(-2)


def quantize_rows(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float (out, in) -> (values int8 (out, in), scale float32 (out,)), symmetric per row.

    As the official quantize(): scale = max|w| / (2^(bits-1) - 1), values = round(w / scale).
    """
    w = weight.float()
    scale = w.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    values = torch.round(w / scale[:, None]).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).to(torch.int8)
    return values, scale


# PyTorch's CPU weight-only int8 kernel is a loop of matrix-vector products: on 2 CPU cores at
# 4096 x 4096 it beat converting the weight at 1-2 rows and lost from 8 rows on (16 vs 43 ms at
# 1 row, 125 vs 85 ms at 8, 6.5 s vs 0.2 s at 256; docs/PERFORMANCE.md). Training and prefill
# take the converted weight.
CPU_INT8PACK_MAX_ROWS = 4


def _int8_matmul(x2d: torch.Tensor, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ (values * scale).T -> (M, out) in x's dtype; the kernel chosen by M and device."""
    if (x2d.device.type == "cpu" and x2d.shape[0] <= CPU_INT8PACK_MAX_ROWS
            and x2d.dtype in (torch.float32, torch.bfloat16, torch.float16)):
        return torch._weight_int8pack_mm(x2d.contiguous(), values, scale.to(x2d.dtype))
    # CUDA beyond quant_kernels.MAX_ROWS (prefill, training): the converted weight through cuBLAS
    # (_weight_int8pack_mm took 53 ms per decode step on the H200, issue 24).
    return (x2d @ values.to(x2d.dtype).t()) * scale.to(x2d.dtype)


def nibbles(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in/2) packed int4 -> the values of the even and of the odd input columns, each (out, in/2) int8."""
    return packed >> 4, (packed << 4) >> 4  # arithmetic shifts keep each nibble's sign


@torch.library.custom_op("glmbot::quantized_matmul", mutates_args=())
def quantized_matmul(x2d: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """x (M, in) @ (values * scale).T -> (M, out) in x's dtype, from the stored int8 / packed int4 weight.

    A `torch.library` custom op, as glmbot.model.kernels' ops are: torch.compile keeps it whole
    (one opaque call in the compiled block, not a trace through Triton's autotuner), and its CUDA
    registration below picks the kernel by rows.
    """
    return _matmul_torch(x2d, qdata, scale, bits)


def _matmul_torch(x2d: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The product in PyTorch's own ops: the CPU's, and CUDA's above quant_kernels.MAX_ROWS."""
    if bits == 8:
        return _int8_matmul(x2d, qdata, scale)
    high, low = nibbles(qdata)  # two half-width products: the interleaved values are never built
    return _int8_matmul(x2d[:, 0::2], high, scale) + _int8_matmul(x2d[:, 1::2], low, scale)


@quantized_matmul.register_fake
def _(x2d, qdata, scale, bits):
    return x2d.new_empty((x2d.shape[0], qdata.shape[0]))


@quantized_matmul.register_kernel("cuda")
def _(x2d, qdata, scale, bits):
    if quant_kernels.available(x2d):  # decode-sized batches: the stored weight itself, in Triton
        return quant_kernels.weight_only_matmul(x2d, qdata, scale, bits)
    return _matmul_torch(x2d, qdata, scale, bits)  # prefill, training: cuBLAS on the converted weight


class _QuantizedLinearFn(torch.autograd.Function):
    """y = x W^T + b through the quantized W; dx = dy W, W = values * scale row by row.

    Only the quantized tensors are saved for backward, as the official W8A16Linear and QLoRA
    do: a float copy of every weight would cost the memory quantization saves. int4 runs as two
    half-width int8 products, x's even columns against the high nibbles and its odd columns against
    the low ones, so the interleaved (out, in) values are never built.
    """

    @staticmethod
    def forward(ctx, x, qdata, scale, bits: int, bias):
        out = quantized_matmul(x.reshape(-1, x.shape[-1]), qdata, scale, bits).view(*x.shape[:-1], -1)
        if bias is not None:
            out = out + bias.to(out.dtype)
        ctx.save_for_backward(qdata, scale)
        ctx.bits = bits
        return out

    @staticmethod
    def backward(ctx, grad):
        qdata, scale = ctx.saved_tensors
        scaled = grad * scale.to(grad.dtype)  # (..., out): dy W = (dy * scale) @ values
        if ctx.bits == 8:
            return scaled @ qdata.to(grad.dtype), None, None, None, None
        high, low = nibbles(qdata)
        even, odd = scaled @ high.to(grad.dtype), scaled @ low.to(grad.dtype)  # (..., in/2) each
        return torch.stack((even, odd), dim=-1).flatten(-2), None, None, None, None


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The float (out, in) weight that `qdata` and `scale` stand for, in `dtype`."""
    values = unpack_int4(qdata) if bits == 4 else qdata
    return (values.float() * scale.float()[:, None]).to(dtype)


def quantized_linear(x: torch.Tensor, weight: RowQuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return _QuantizedLinearFn.apply(x, weight.qdata, weight.scale, weight.bits, bias)


aten = torch.ops.aten
_SHARED = (aten.detach.default, aten.alias.default)  # results share qdata/scale with the weight
_COPIED = (aten.clone.default, aten.contiguous.default)


class RowQuantizedWeight(torch.Tensor):
    """A frozen (out, in) weight as int8 or packed int4 `qdata` and a per-row `scale` (out,).

    Reports the float dtype and the logical shape of the weight it replaces, so shape checks and
    `model.dtype` see what they saw before. F.linear runs `quantized_linear`; detach, device
    moves and copy_ are answered here (copy_ from a float tensor quantizes it: checkpoint loading);
    any other operation raises, naming itself, rather than compute on the int8 storage.
    """

    @staticmethod
    def __new__(cls, qdata: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype):
        shape = (qdata.shape[0], qdata.shape[1] * (8 // bits))
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=qdata.device, requires_grad=False)

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype):
        self.qdata, self.scale, self.bits = qdata, scale, bits
        quant_kernels.note_device(qdata.device)  # as weights load or move, not inside a traced forward

    def __repr__(self) -> str:
        return f"RowQuantizedWeight(int{self.bits}, shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    def __tensor_flatten__(self):
        return ["qdata", "scale"], (self.bits, self.dtype)

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return RowQuantizedWeight(inner["qdata"], inner["scale"], *meta)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.qdata, self.scale, self.bits, dtype or self.dtype)

    @property
    def nbytes_stored(self) -> int:
        return self.qdata.numel() * self.qdata.element_size() + self.scale.numel() * self.scale.element_size()

    def _with(self, fn) -> RowQuantizedWeight:
        return RowQuantizedWeight(fn(self.qdata), fn(self.scale), self.bits, self.dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            return quantized_linear(x, weight, args[2] if len(args) > 2 else kwargs.get("bias"))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        weight = args[0]
        if func in _SHARED:
            return weight._with(lambda t: t)
        if func in _COPIED:
            return weight._with(torch.clone)
        if func is aten._to_copy.default:
            device = kwargs.get("device") or weight.device
            moved = weight._with(lambda t: t.to(device))
            moved_dtype = kwargs.get("dtype") or weight.dtype
            return RowQuantizedWeight(moved.qdata, moved.scale, weight.bits, moved_dtype)
        if func is aten.copy_.default:
            return _copy_into(weight, args[1])
        if func is aten.linear.default:
            x, weight = args[0], args[1]
            return quantized_linear(x, weight, args[2] if len(args) > 2 else None)
        raise QuantizationError(
            f"{func} is not defined on a quantized int{weight.bits} weight {tuple(weight.shape)}; only F.linear, "
            "copy_ and device moves are: call .dequantize() first, or load the base with quantization = \"none\"")


def _copy_into(target: RowQuantizedWeight, src: torch.Tensor) -> RowQuantizedWeight:
    if isinstance(src, RowQuantizedWeight):
        target.qdata.copy_(src.qdata)
        target.scale.copy_(src.scale)
        return target
    values, scale = quantize_rows(src.to(target.qdata.device), target.bits)
    target.qdata.copy_(pack_int4(values) if target.bits == 4 else values)
    target.scale.copy_(scale)
    return target


def empty_weight(out_features: int, in_features: int, bits: int, dtype: torch.dtype, device: torch.device,
                 scale_dtype: torch.dtype = torch.float32):
    cols = in_features // 2 if bits == 4 else in_features
    qdata = torch.zeros(out_features, cols, dtype=torch.int8, device=device)
    return RowQuantizedWeight(qdata, torch.ones(out_features, dtype=scale_dtype, device=device), bits, dtype)


def check_quantization(kind: str | None, device: torch.device) -> str:
    """The quantization to use ("none", "int8", "int4"); an unknown one or a device without kernels raises."""
    kind = "none" if kind in (None, "", "none") else kind
    if kind not in QUANTIZATIONS:
        raise QuantizationError(f"unknown quantization {kind!r}: use one of {', '.join(QUANTIZATIONS)}")
    if kind != "none" and device.type not in DEVICES:
        raise QuantizationError(
            f"quantization {kind!r} has no kernels on device {str(device)!r} (glmbot's quantized products run on "
            f"{' and '.join(DEVICES)}): set device = \"cpu\" or \"cuda\", or quantization = \"none\"")
    return kind


def target_names(model: torch.nn.Module, output_layer: bool = False) -> list[str]:
    """Qualified names of the linear modules a quantized base swaps."""
    names = [f"transformer.encoder.layers.{i}.{t}" for i in range(len(model.transformer.encoder.layers))
             for t in TARGETS]
    return names + [OUTPUT_LAYER] * output_layer


def swap_weights(model: torch.nn.Module, kind: str, output_layer: bool = False,
                 scale_dtype: torch.dtype = torch.float32) -> int:
    """Give every target linear an empty quantized weight (filled by loading or `quantize_model`).

    Returns the number of swapped layers. The model must not be quantized yet.
    """
    bits = BITS[kind]
    names = target_names(model, output_layer)
    for name in names:
        linear = model.get_submodule(name)
        out_f, in_f = linear.weight.shape
        if bits == 4 and in_f % 2:
            raise QuantizationError(f"{name} has {in_f} inputs: int4 packs two per byte and needs an even number")
        weight = empty_weight(out_f, in_f, bits, linear.weight.dtype, linear.weight.device, scale_dtype)
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    model.config.glmbot_quantization = kind
    return len(names)


def quantize_model(model: torch.nn.Module, kind: str, output_layer: bool = False) -> torch.nn.Module:
    """Quantize an already loaded float model in place (tests, benchmarks); loading does it per tensor."""
    if kind == "none":
        return model
    floats = {name: model.get_submodule(name).weight.detach() for name in target_names(model, output_layer)}
    swap_weights(model, kind, output_layer)
    with torch.no_grad():
        for name, weight in floats.items():
            model.get_submodule(name).weight.copy_(weight)
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the base's weights as stored (quantized ones as int8/int4 + scales); prefix excluded."""
    total = 0
    for name, p in model.named_parameters():
        if "prefix_encoder" in name:
            continue
        total += p.nbytes_stored if hasattr(p, "nbytes_stored") else p.numel() * p.element_size()
    return total


@dataclass
class OfficialQuantizedReader:
    """Reads an official quantized checkpoint's `X.weight` (int8, or int4 packed) and `X.weight_scale`
    straight into the model's quantized weights (never through float), checking the layout."""

    params: dict
    bits: int
    file_name: str = ""

    def __post_init__(self):
        self.seen_weights: set[str] = set()
        self.seen_scales: set[str] = set()

    def accept(self, key: str, tensor: torch.Tensor) -> bool:
        """True when `key` was a quantized weight or scale (and is now loaded)."""
        if key.endswith(SCALE_SUFFIX):
            weight_key = key[: -len(SCALE_SUFFIX)] + ".weight"
            target = self._target(weight_key, key, tensor)
            if tensor.shape != (target.shape[0],) or not tensor.is_floating_point():
                self._foreign(key, tensor, f"a float vector of {target.shape[0]} row scales")
            target.scale = tensor.to(target.qdata.device)
            self.seen_scales.add(weight_key)
            return True
        param = self.params.get(key)
        if param is None or not hasattr(param, "qdata"):
            return False
        if tensor.dtype != torch.int8 or tuple(tensor.shape) != tuple(param.qdata.shape):
            packing = "int4 packed two per byte" if self.bits == 4 else "int8"
            self._foreign(key, tensor, f"int8 {tuple(param.qdata.shape)} ({packing}, as the official QuantizedLinear)")
        param.qdata.copy_(tensor)
        self.seen_weights.add(key)
        return True

    def _target(self, weight_key: str, key: str, tensor: torch.Tensor):
        param = self.params.get(weight_key)
        if param is None or not hasattr(param, "qdata"):
            raise CheckpointMismatchError(
                f"{self.file_name}: {key} {tuple(tensor.shape)} scales a weight that quantization_bit="
                f"{self.bits} does not quantize; the checkpoint's layout is not the official one")
        return param

    def _foreign(self, key: str, tensor: torch.Tensor, expected: str):
        raise CheckpointMismatchError(
            f"{self.file_name}: {key} is {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)} but "
            f"quantization_bit={self.bits} stores {expected}; re-export it with the official quantize(), or load "
            "the fp16/bf16 checkpoint with quantization = \"int4\" / \"int8\"")

    def finish(self, folder) -> None:
        """Every quantized weight came with its values and its scale."""
        quantized = {k for k, p in self.params.items() if hasattr(p, "qdata")}
        for missing, what in ((quantized - self.seen_scales, "weight_scale"), (quantized - self.seen_weights, "weight")):
            if missing:
                first = min(missing)
                name = first[: -len(".weight")] + SCALE_SUFFIX if what == "weight_scale" else first
                raise CheckpointMismatchError(
                    f"{folder}: {name} is missing ({len(missing)} quantized layers lack their {what}); a "
                    f"quantization_bit={self.bits} checkpoint stores int8 values and a weight_scale per quantized "
                    "layer: download the checkpoint again or load its fp16/bf16 version")


def resolve_quantization(requested: str | None, checkpoint_bit: int, device: torch.device) -> str:
    """The quantization a load uses: the one asked for, or the checkpoint's own (quantization_bit)."""
    kind = check_quantization(requested, device)
    if not checkpoint_bit:
        return kind
    stored = {8: "int8", 4: "int4"}[checkpoint_bit]
    if kind not in ("none", stored):
        raise QuantizationError(
            f"the checkpoint is already quantized to {stored} (quantization_bit={checkpoint_bit}) but quantization "
            f"= {kind!r} was asked: set quantization = {stored!r} (or \"none\"), or load the fp16/bf16 checkpoint")
    return check_quantization(stored, device)
