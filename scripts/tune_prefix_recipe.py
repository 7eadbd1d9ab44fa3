"""Sweep prefix recipes (P, projection, LR, steps, batch) on the tuning domains and print a table.

    python scripts/tune_prefix_recipe.py --P 64,128 --lr 5e-2,1e-1 --steps 300,600 [--device cuda]

Each domain is a folder with train.jsonl and paraphrases.jsonl (scripts/tuning_domains/: a gym
and a bakery, written for this). For each recipe and domain: train on train.jsonl, then greedy-
answer its questions and the paraphrases and report ROUGE-L (official, jieba words) against the
answers, plus how many general-chat probe answers stay the base's. Used to choose glmbot.toml's
[train] defaults for the builtin base. The held-out domains of bench/domains are never used here.
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
from glmbot.training.evaluate import evaluate_prefix  # noqa: E402
from glmbot.training.trainer import PrefixTrainer  # noqa: E402

TUNING = Path(__file__).resolve().parent / "tuning_domains"
GREETINGS = ["你好", "你是谁", "谢谢", "早上好", "你会做什么"]


def rouge_l(model, tok, kv, examples) -> float:
    """ROUGE-L of greedy answers (glmbot eval's own scoring)."""
    return evaluate_prefix(model, tok, kv, examples, max_new_tokens=96).metrics["rouge-l"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--domains", default=",".join(sorted(p.name for p in TUNING.iterdir() if p.is_dir())))
    ap.add_argument("--device", default=None)
    ap.add_argument("--P", default="128")
    ap.add_argument("--projection", default="0")
    ap.add_argument("--lr", default="1e-1")
    ap.add_argument("--steps", default="600")
    ap.add_argument("--batch-size", default="16")
    args = ap.parse_args()
    model, tok = load_base(args.base, device=args.device)
    base_greet = generate_answers(model, tok, GREETINGS)
    data = {}
    for name in args.domains.split(","):
        folder = TUNING / name
        data[name] = (load_examples(folder / "train.jsonl"), load_examples(folder / "paraphrases.jsonl"))
        print(f"{name}: plain base ROUGE-L train {rouge_l(model, tok, None, data[name][0]):.1f} "
              f"paraphrases {rouge_l(model, tok, None, data[name][1]):.1f}", flush=True)
    print("| domain | P | proj | LR | steps | batch | train s | final loss | ROUGE-L train | paraphrases | greetings kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    grid = itertools.product(args.P.split(","), args.projection.split(","), args.lr.split(","),
                             args.steps.split(","), args.batch_size.split(","))
    for P, proj, lr, steps, bs in grid:
        s = TrainSettings(pre_seq_len=int(P), prefix_projection=proj == "1", learning_rate=float(lr),
                          max_steps=int(steps), batch_size=int(bs), checkpoint_every=0, compile=False)
        for name, (train, para) in data.items():
            encoded, _ = encode_all(tok, train, s.max_source_length, s.max_target_length)
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                res = PrefixTrainer(model, s, Path(tmp)).fit(encoded)
                took = time.perf_counter() - t
            kv = res.encoder.kv().detach()
            kept = sum(a == b for a, b in zip(generate_answers(model, tok, GREETINGS, kv), base_greet))
            loss = sum(res.losses[-10:]) / len(res.losses[-10:])
            print(f"| {name} | {P} | {proj} | {lr} | {steps} | {bs} | {took:.0f} | {loss:.3f} | "
                  f"{rouge_l(model, tok, kv, train):.1f} | {rouge_l(model, tok, kv, para):.1f} | "
                  f"{kept}/{len(GREETINGS)} |", flush=True)


if __name__ == "__main__":
    main()
