"""Which kernels a full-size prefix-training step spends its time in (CUDA only).

    python bench/profile_train.py [--compile]

Runs a few micro-batches of the train bench's glmbot layout (batch 32, P=128, ChatGLM2-6B shape,
random bf16 weights) under torch.profiler and prints the CUDA kernels by total time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_table import print_kernel_table  # noqa: E402
from train_bench import (COMPILE_VARIANTS, apply_variant, batches_for, random_full_size, run_scenario,  # noqa: E402
                         synthetic_examples, training_attention)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--variant", default="trainer", choices=list(COMPILE_VARIANTS), help="with --compile")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    device = torch.device("cuda")
    model = random_full_size(device)
    multiple = 8
    model.set_training_attention(training_attention(None, device))
    if args.compile:
        multiple = apply_variant(model, args.variant, device)
    examples = synthetic_examples(32 * 12, model.config.padded_vocab_size)
    batches = batches_for("glmbot", examples, 32, multiple)
    run_scenario(model, "warm-up", batches[:8 + args.steps], args.steps, 128, device, warmup=8)  # + the profiled shapes
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        measured = run_scenario(model, "profiled", batches[8:8 + args.steps], args.steps, 128, device, warmup=0,
                                warm_timed=False)
    print(f"{measured['real_tok_s']:,.0f} real tokens/s under the profiler")
    print_kernel_table(prof, args.steps, "micro-batch", args.rows)


if __name__ == "__main__":
    main()
