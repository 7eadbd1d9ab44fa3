"""Which kernels a full-size decode step spends its time in (CUDA only).

    python bench/profile_decode.py --compile          # 64 streams over 8 domains, P=128

Runs the serving bench's mixed-domain scenario on an eager static-shape engine under
torch.profiler and prints the CUDA kernels by total time: what a CUDA-graph replay of the same
step executes, without the launch overhead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_bench import build_model, make_prefixes, make_prompts, requests_for, run_engine  # noqa: E402

from glmbot.config import Settings  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--prefix-len", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    args.full_size, args.device, args.model = True, "cuda", ""
    model, tok = build_model(args)
    if args.compile:
        model.compile_dense()
    prompts = make_prompts(args.streams, args.prompt_len, tok)
    prefixes = make_prefixes(model, args.domains, args.prefix_len, spread=False)
    settings = Settings()
    settings.serving.prefix_cache_mib = 1 << 16
    with Engine(model, tok, prefixes=prefixes, settings=settings, max_batch_size=args.streams,
                max_len=args.prompt_len + args.max_new_tokens, max_prefix_len=args.prefix_len,
                prefill_token_budget=1 << 15, static_shapes=True) as engine:
        names = list(prefixes)
        run_engine(engine, "warm-up", requests_for(prompts, names, 8))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run_engine(engine, "profiled", requests_for(prompts, names, args.max_new_tokens))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90))


if __name__ == "__main__":
    main()
