"""One batched prefill on the builtin base, as `glmbot serve` sizes its engine (64 rows, 2,048-token
context): 32 chat requests at once, greedy, 16 new tokens each; wall time and the engine's prefill
time, best of --repeat. Run it alone (CPU timings share the cores).

    python bench/prefill_batch.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glmbot import load_base  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402
from glmbot.serving.requests import GenerationRequest  # noqa: E402

QUESTIONS = ["退货多久到账？", "你好", "你是谁", "谢谢", "今天天气怎么样？", "可以开发票吗？", "多久发货？", "怎么联系客服？"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model, tok = load_base("builtin:tiny", device=args.device)
    asks = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    with Engine(model, tok, max_batch_size=64) as engine:
        engine.generate_many([GenerationRequest(query=q, max_new_tokens=4) for q in asks[:4]])  # warm-up
        runs = []
        for _ in range(args.repeat):
            before, started = engine.stats(), time.perf_counter()
            engine.generate_many([GenerationRequest(query=q, max_new_tokens=16, do_sample=False) for q in asks])
            after = engine.stats()
            runs.append((time.perf_counter() - started, after.prefill_s - before.prefill_s,
                         after.prefill_forwards - before.prefill_forwards))
        wall, prefill, forwards = min(runs)
        print(f"{args.requests} requests at once on {args.device} ({engine.scheduler.slots.length} slots per row): "
              f"wall {wall * 1e3:.0f} ms, prefill {prefill * 1e3:.0f} ms in {forwards} forward(s) (best of {args.repeat})")


if __name__ == "__main__":
    main()
