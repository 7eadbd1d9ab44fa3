"""Which CUDA BLAS library runs the decode step's matrix products: picked by timing them on this card.

Two H100 runs had cuBLASLt 2.5-2.9% faster over a 64-row decode step (its 4h->h product skips the
split-K reduction cuBLAS adds); one H200 run on an older torch had it 4% slower. Neither choice is
right on every card and torch release, so `[serving] blas = "auto"` times the model's own products at
the engine's row count under both, once, before any CUDA graph is captured (graphs keep the kernels
they were captured with), and keeps the faster. The preference is process-wide
(`torch.backends.cuda.preferred_blas_library`): whatever else runs in the process afterwards (a
notebook's training, a second engine) uses it too. With `[serving] deterministic = true`, "auto" is
cuBLAS without timing, so that every start runs the same kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from glmbot.model.quantization import RowQuantizedWeight

log = logging.getLogger(__name__)

BLAS_LIBRARIES = ("cublas", "cublaslt")
# cuBLASLt is kept only when it is at least this much faster: a tie keeps torch's default, cuBLAS.
MIN_GAIN = 0.01
TIMED_PASSES = 5  # per library, interleaved; the fastest pass counts (clocks and other work vary)


@dataclass(frozen=True)
class BlasChoice:
    library: str  # "cublas" or "cublaslt"
    reason: str  # why: "timed over a decode step's products", "named", "deterministic decode"
    ms: dict[str, float] = field(default_factory=dict)  # per library: one pass over the products, when timed

    def describe(self) -> str:
        times = "".join(f", {lib} {ms:.3f} ms" for lib, ms in self.ms.items())
        return f"BLAS {self.library} ({self.reason}{times})"


def pick_library(ms: dict[str, float]) -> str:
    """The library to keep given one pass's time under each: cuBLASLt only if MIN_GAIN faster."""
    return "cublaslt" if ms["cublaslt"] < ms["cublas"] * (1 - MIN_GAIN) else "cublas"


def fastest_passes(measure: Callable[[str], float], passes: int = TIMED_PASSES) -> dict[str, float]:
    """The fastest of `passes` timings of each library, measured alternately so that drift (clock
    boost, another process) falls on both alike; one untimed warm-up pass each first."""
    for library in BLAS_LIBRARIES:
        measure(library)
    best = {library: float("inf") for library in BLAS_LIBRARIES}
    for _ in range(passes):
        for library in BLAS_LIBRARIES:
            best[library] = min(best[library], measure(library))
    return best


def decode_products(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's half-precision Linear layers in forward order (quantized ones run glmbot's own
    kernels, not BLAS)."""
    return [m for m in model.modules()
            if isinstance(m, torch.nn.Linear) and not isinstance(m.weight, RowQuantizedWeight)
            and m.weight.dtype in (torch.float16, torch.bfloat16)]


def time_products(products: Sequence[torch.nn.Linear], rows: int, library: str) -> float:
    """Milliseconds of one pass over `products` at `rows` input rows, under `library`.

    Every layer's weight is read once a pass, as in a decode step, so the timing sees HBM, not L2.
    """
    torch.backends.cuda.preferred_blas_library(library)
    first = products[0].weight
    inputs = {m.in_features: torch.randn(rows, m.in_features, device=first.device, dtype=first.dtype)
              for m in products}
    with torch.cuda.device(first.device), torch.no_grad():  # events record on the products' device
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for m in products:
            F.linear(inputs[m.in_features], m.weight, m.bias)
        end.record()
        end.synchronize()
    return start.elapsed_time(end)


def choose_blas(model: torch.nn.Module, rows: int, setting: str = "auto", deterministic: bool = False,
                source: str = "[serving] blas") -> BlasChoice | None:
    """Set the process's BLAS library for serving `model` at `rows` decode rows, as `setting`
    ("auto", "cublas", "cublaslt", named in `source`) says; "auto" with `deterministic` decode is
    cuBLAS, untimed. None where there is no choice to make: not on CUDA, or no half-precision
    products."""
    if setting not in ("auto", *BLAS_LIBRARIES):
        raise ValueError(f"{source} = {setting!r}: use 'auto', 'cublas' or 'cublaslt'")
    if model.device.type != "cuda":
        return None
    if setting != "auto" or deterministic:
        choice = BlasChoice("cublas" if setting == "auto" else setting,
                            "deterministic decode: the same kernels every start" if setting == "auto" else
                            f"named in {source}")
        torch.backends.cuda.preferred_blas_library(choice.library)
        return choice
    products = decode_products(model)
    if not products:
        return None
    before = torch.backends.cuda.preferred_blas_library()
    try:
        ms = fastest_passes(lambda library: time_products(products, rows, library))
    except BaseException:
        torch.backends.cuda.preferred_blas_library(before)  # not whichever library was being timed
        raise
    choice = BlasChoice(pick_library(ms), "timed over a decode step's products", ms)
    torch.backends.cuda.preferred_blas_library(choice.library)
    log.info("%s", choice.describe())
    return choice
