"""Which kernels one full-size decode step spends its time in (CUDA only).

    python bench/profile_decode.py --compile            # batch buckets 64 and 1, P=128 slots
    python bench/profile_decode.py --compile --quantize int4   # the same on an int4 base

Builds the serving engine's static-shape decode step (what the CUDA graphs capture) on random
ChatGLM2-6B weights, runs it --steps times per batch under torch.profiler and prints the CUDA
kernels by time per step. Idle inputs: the kernels and shapes are those of a full batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_table import print_kernel_table  # noqa: E402
from serving_bench import add_blas, add_slot_attention, apply_blas, build_model  # noqa: E402

from glmbot.config import Settings  # noqa: E402
from glmbot.model.quantization import quantize_model  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402
from glmbot.serving.kv_slots import set_slot_attention  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--prefix-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=192, help="prompt + new tokens per row")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--quantize", default="none", choices=("none", "int8", "int4"), help="the base's products (issue 24)")
    ap.add_argument("--deterministic", action="store_true",
                    help="as [serving] deterministic = true: folded decode attention, never cuDNN (default: cuDNN "
                         "grouped KV, as glmbot serve runs on CUDA)")
    add_slot_attention(ap)
    add_blas(ap)
    args = ap.parse_args()
    set_slot_attention(args.slot_attention)
    args.full_size, args.device, args.model, args.family, args.shape = True, "cuda", "", "chatglm2", "full"
    model, tok = build_model(args)
    model.set_deterministic_decode(args.deterministic)
    if args.quantize != "none":
        quantize_model(model, args.quantize)
    print(apply_blas(args, model, max(map(int, args.batches.split(",")))) or "BLAS: torch's default")
    if args.compile:
        model.compile_dense()
    with Engine(model, tok, settings=Settings(), max_batch_size=max(map(int, args.batches.split(","))),
                max_len=args.max_len, max_prefix_len=args.prefix_len, static_shapes=True) as engine:
        scheduler = engine.scheduler
        for n in map(int, args.batches.split(",")):
            inputs = [torch.full((n, 1), v, dtype=torch.long, device="cuda") for v in (0, 0, scheduler.slots.scratch, 1)]
            with torch.no_grad():
                for _ in range(3):
                    scheduler._decode(*inputs, scheduler.slots.length)
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.steps):
                        scheduler._decode(*inputs, scheduler.slots.length)
                    torch.cuda.synchronize()
            print(f"\nbatch {n}:")
            print_kernel_table(prof, args.steps, "step", args.rows)


if __name__ == "__main__":
    main()
