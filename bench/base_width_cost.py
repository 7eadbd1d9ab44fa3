"""What a larger builtin base would cost a newcomer: prefix training time on the CPU per base shape.

    python bench/base_width_cost.py                  # hr (bench/domains), 60 steps per shape, x10 for 600
    python bench/base_width_cost.py --steps 100

Random weights of each shape (same tokenizer and vocabulary as builtin:tiny), the [train] defaults
of glmbot.toml (rewordings and history rows included), timed alone on this machine's CPU threads.
Issue 17's budget: a 30-line domain trains in <= 3 minutes on 2 cores, weights <= 40 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from glmbot import load_base  # noqa: E402
from glmbot.config import load_settings  # noqa: E402
from glmbot.model.configuration import ChatGLMConfig  # noqa: E402
from glmbot.model.modeling import ChatGLMForConditionalGeneration  # noqa: E402
from glmbot.training.data import encode_all, load_examples  # noqa: E402
from glmbot.training.rewrites import augmented_rows  # noqa: E402
from glmbot.training.trainer import PrefixTrainer  # noqa: E402

SHAPES = [(6, 256, 864), (6, 320, 1080), (6, 384, 1296), (8, 256, 864), (4, 384, 1296)]  # layers, hidden, ffn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", default="hr")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    settings = load_settings(ROOT / "glmbot.toml")
    train = settings.train_for(None, max_steps=args.steps, checkpoint_every=0)
    base, tok = load_base("builtin:tiny", device="cpu")
    questions = load_examples(ROOT / "bench" / "domains" / args.domain / "train.jsonl")
    encoded = encode_all(tok, questions, train.max_source_length, train.max_target_length)[0]
    for extra in augmented_rows(tok, questions, train):
        encoded += extra
    full = settings.train_for(None).max_steps
    print(f"{args.domain}: {len(questions)} lines, {torch.get_num_threads()} CPU threads, {args.steps} steps timed\n")
    print(f"| layers x hidden (ffn) | parameters | bf16 MB | {args.steps} steps s | {full} steps s (est.) |")
    print("|---|---|---|---|---|")
    for layers, hidden, ffn in SHAPES:
        config = ChatGLMConfig(**{**base.config.to_dict(), "num_layers": layers, "hidden_size": hidden,
                                  "num_attention_heads": hidden // 32, "ffn_hidden_size": ffn})
        torch.manual_seed(0)
        model = ChatGLMForConditionalGeneration(config).to(base.dtype).eval().requires_grad_(False)
        params = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            PrefixTrainer(model, train, Path(tmp), tok.pad_token_id).fit(encoded)
            seconds = time.perf_counter() - started
        print(f"| {layers} x {hidden} ({ffn}) | {params / 1e6:.1f}M | {2 * params / 1e6:.1f} | {seconds:.1f} | "
              f"{seconds * full / args.steps:.0f} |", flush=True)


if __name__ == "__main__":
    main()
