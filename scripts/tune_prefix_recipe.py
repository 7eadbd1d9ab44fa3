"""Sweep prefix recipes (P, projection, LR, steps) on a base and report how many answers come back.

    python scripts/tune_prefix_recipe.py --base builtin:tiny --steps 100,200 --lr 2e-2,5e-3 --P 16,32

For each recipe: train on the domain's data, then greedy-answer every single-turn training
question and count exact matches, and whether greetings still get the base's answer.
Used to choose glmbot.toml's [train] defaults for the builtin base.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glmbot import load_base  # noqa: E402
from glmbot.config import TrainSettings  # noqa: E402
from glmbot.model.generate import generate_answers  # noqa: E402
from glmbot.training.data import encode_all, load_examples  # noqa: E402
from glmbot.training.trainer import PrefixTrainer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--data", default="builtin:support")
    ap.add_argument("--device", default=None)
    ap.add_argument("--P", default="16")
    ap.add_argument("--lr", default="2e-2")
    ap.add_argument("--steps", default="150")
    ap.add_argument("--batch-size", default="16")
    ap.add_argument("--projection", default="0")
    args = ap.parse_args()
    model, tok = load_base(args.base, device=args.device)
    examples = load_examples(args.data)
    encoded, _ = encode_all(tok, examples, 64, 128)
    single = [e for e in examples if not e.history]
    greet = ["你好", "你是谁", "谢谢"]
    base_greet = generate_answers(model, tok, greet)
    print("| P | proj | LR | steps | batch | train s | final loss | exact | greeting kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    grid = itertools.product(args.P.split(","), args.projection.split(","), args.lr.split(","),
                             args.steps.split(","), args.batch_size.split(","))
    for P, proj, lr, steps, bs in grid:
        s = TrainSettings(pre_seq_len=int(P), prefix_projection=proj == "1", learning_rate=float(lr),
                          max_steps=int(steps), batch_size=int(bs), checkpoint_every=0)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = PrefixTrainer(model, s, Path(tmp))
            t = time.perf_counter()
            res = trainer.fit(encoded)
            took = time.perf_counter() - t
        kv = res.encoder.kv().detach()
        got = generate_answers(model, tok, [e.prompt for e in single], kv, batch_size=64)
        exact = sum(g == e.response.strip() for g, e in zip(got, single))
        kept = sum(a == b for a, b in zip(generate_answers(model, tok, greet, kv), base_greet))
        loss = sum(res.losses[-10:]) / len(res.losses[-10:])
        print(f"| {P} | {proj} | {lr} | {steps} | {bs} | {took:.0f} | {loss:.3f} | {exact}/{len(single)} | "
              f"{kept}/{len(greet)} |", flush=True)


if __name__ == "__main__":
    main()
