"""Which quantized linear layer? glmbot's against the libraries installed here, one layer, same run.

    python bench/quantization_libraries.py                 # CPU, ChatGLM2-6B's dense_h_to_4h (27392 x 4096)
    python bench/quantization_libraries.py --shape 1728 256   # builtin:tiny's

Per candidate: bytes stored per weight, forward ms at 1 and 64 rows, whether the input gradient
flows, its error against the float layer, and the extra bytes autograd keeps for backward
(a float copy of the weight defeats quantized training). Candidates whose library is not
installed (torchao, bitsandbytes) are listed as such; neither is a glmbot dependency.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glmbot.model.quantization import RowQuantizedWeight, pack_int4, quantize_rows  # noqa: E402


def glmbot_weight(w: torch.Tensor, bits: int):
    values, scale = quantize_rows(w, bits)
    qdata = pack_int4(values) if bits == 4 else values
    return lambda x: F.linear(x, RowQuantizedWeight(qdata, scale, bits, w.dtype)), qdata.nbytes + scale.nbytes


def torchao_weight(w: torch.Tensor, kind: str):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    layer.weight.data.copy_(w)
    config = Int8WeightOnlyConfig() if kind == "int8" else IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                                granularity=PerAxis(0))
    quantize_(layer, config)
    inner = layer.weight
    return layer, sum(getattr(inner, n).nbytes for n in inner.__tensor_flatten__()[0])


def bnb_weight(w: torch.Tensor, kind: str):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False, threshold=0.0)
        layer.load_state_dict({"weight": w.clone()})
        layer = layer.to("cpu")  # bitsandbytes quantizes the weight on the move to a device
        return layer, layer.weight.nbytes + layer.weight.SCB.nbytes
    q, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    return (lambda x: bnb.matmul_4bit(x, q.t(), quant_state=state)), q.nbytes + state.absmax.nbytes


CANDIDATES = {
    "glmbot int8 (per row)": lambda w: glmbot_weight(w, 8),
    "glmbot int4 (per row, packed)": lambda w: glmbot_weight(w, 4),
    "torchao int8 weight-only": lambda w: torchao_weight(w, "int8"),
    "torchao int4 (Intx, per row)": lambda w: torchao_weight(w, "int4"),
    "bitsandbytes int8 (LLM.int8, no outliers)": lambda w: bnb_weight(w, "int8"),
    "bitsandbytes nf4 (block 64)": lambda w: bnb_weight(w, "nf4"),
}


def ms(fn, x, repeat: int) -> float:
    with torch.no_grad():
        fn(x)
        start = time.perf_counter()
        for _ in range(repeat):
            fn(x)
    return 1e3 * (time.perf_counter() - start) / repeat


def saved_bytes(fn, x) -> int:
    """Bytes of tensors autograd keeps for backward beyond the input itself."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
        fn(x)
    return sum(saved) - x.nbytes * saved.count(x.nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[27392, 4096], metavar=("OUT", "IN"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    w = torch.randn(*args.shape) * 0.02
    x1, x64 = torch.randn(1, args.shape[1]), torch.randn(64, args.shape[1])
    table = Table(title=f"one {args.shape[0]} x {args.shape[1]} layer, fp32 activations, torch {torch.__version__}",
                  header_style="bold")
    for c in ("layer", "bytes/weight", "ms @1 row", "ms @64 rows", "input grad", "rel. error", "kept for backward"):
        table.add_column(c, justify="left" if c == "layer" else "right")
    table.add_row("fp32 F.linear (baseline)", "4.00", f"{ms(lambda x: F.linear(x, w), x1, args.repeat):.2f}",
                  f"{ms(lambda x: F.linear(x, w), x64, args.repeat):.2f}", "yes", "0", "0 (weight is a leaf)")
    ref = F.linear(x64, w)
    for name, make in CANDIDATES.items():
        try:
            fn, nbytes = make(w)
        except ImportError as exc:
            table.add_row(name, "-", "-", "-", "-", "-", f"not installed ({exc.name})")
            continue
        except Exception as exc:  # noqa: BLE001 - a library that cannot build this layer on this machine
            table.add_row(name, "-", "-", "-", "-", "-", f"{type(exc).__name__}: {str(exc)[:40]}")
            continue
        xg = x64.clone().requires_grad_(True)
        try:
            fn(xg).sum().backward()
            grad = "yes" if xg.grad is not None and xg.grad.abs().sum() > 0 else "no"
        except Exception:  # noqa: BLE001
            grad = "no"
        err = float((fn(x64).float() - ref).norm() / ref.norm())
        kept = saved_bytes(fn, x64.clone().requires_grad_(True))
        table.add_row(name, f"{nbytes / w.numel():.2f}", f"{ms(fn, x1, args.repeat):.2f}",
                      f"{ms(fn, x64, args.repeat):.2f}", grad, f"{err:.4f}", f"{kept / 2**20:.1f} MiB")
    Console().print(table)


if __name__ == "__main__":
    main()
