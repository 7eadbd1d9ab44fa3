"""The CUDA kernels of a torch.profiler run as a markdown table (shared by the profile_* benches)."""

from __future__ import annotations

import re

import torch

_GEMM = re.compile(r"gemm|nvjet|cutlass|xmma|cublas|_gemv_kernel|_tensor_core_kernel", re.IGNORECASE)  # + glmbot's quantized products


def print_kernel_table(prof: torch.profiler.profile, per: int, unit: str, rows: int, per_call: bool = False) -> float:
    """Kernels by total device time, divided over `per` units (steps, micro-batches); returns the
    total ms of kernels per unit. per_call: also each kernel's mean µs per call."""
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) / per / 1e3
    gemm = sum(e.self_device_time_total for e in events if _GEMM.search(e.key) and "flash" not in e.key.lower()) / per / 1e3
    print(f"{total:.2f} ms of kernels per {unit}, {sum(e.count for e in events) / per:.0f} kernels; "
          f"matrix products (cuBLAS/CUTLASS) {gemm:.2f} ms, everything else {total - gemm:.2f} ms")
    print(f"| kernel | ms per {unit} | share | calls |" + (" µs per call |" if per_call else ""))
    print("|---|---|---|---|" + ("---|" if per_call else ""))
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        ms = e.self_device_time_total / per / 1e3
        call = f" {e.self_device_time_total / e.count:.1f} |" if per_call else ""
        print(f"| {e.key[:100]} | {ms:.3f} | {ms / total:.1%} | {e.count / per:.0f} |{call}")
    return total
