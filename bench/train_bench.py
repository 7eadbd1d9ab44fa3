"""Prefix-training throughput: glmbot's trainer layout vs the official P-Tuning v2 recipe, same run.

    python bench/train_bench.py --full-size            # ChatGLM2-6B shape, random bf16 weights, CUDA
    python bench/train_bench.py --tiny --steps 4       # builtin tiny base on CPU (checks the script)

Scenarios (same synthetic data: prompts <= 64 tokens, answers <= 128 of realistic, variable length):
  official  micro-batch 1, every row padded to 64 + 128 + 1, gradient checkpointing, full logits
  glmbot    micro-batch 32, length-grouped, padded per batch, logits only on answer tokens, the
            dense parts on the real tokens only (packed), the trainer's CUDA attention and kernels
  glmbot+compile  the same with each block's dense parts compiled (--compile; the trainer's CUDA default),
                  one row per --variants entry (attention, packing, kernels: see COMPILE_VARIANTS)
Reported: real (non-pad) tokens/s, tokens/s counting padding, peak memory, and FLOP utilisation
= real tokens/s x 4 x params / the bf16 matmul rate (mean of a measurement before and one after
the scenarios: the rate drifts as the GPU heats, 820 -> 715 TFLOP/s in one H200 run).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glmbot.model.configuration import ChatGLMConfig  # noqa: E402
from glmbot.model.loading import build_empty, load_base  # noqa: E402
from glmbot.model.modeling import answer_loss, count_parameters  # noqa: E402
from glmbot.model.prefix import PrefixEncoder, PrefixKV  # noqa: E402
from glmbot.training.data import Encoded, collate, length_grouped_batches  # noqa: E402
from glmbot.training.trainer import TRAINING_ATTENTION_CUDA  # noqa: E402

MAX_SOURCE, MAX_TARGET = 64, 128


def random_full_size(device: torch.device) -> torch.nn.Module:
    """ChatGLM2-6B with random weights, allocated in bf16 straight on the device."""
    model = build_empty(ChatGLMConfig(), torch.bfloat16, device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("layernorm.weight") else p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def synthetic_examples(n: int, vocab: int, seed: int = 0) -> list[Encoded]:
    """Prompt lengths uniform in 16..64, answer lengths log-normal (median ~60) capped at 128."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.randint(16, MAX_SOURCE)
        b = min(MAX_TARGET, max(4, int(rng.lognormvariate(math.log(60), 0.6))))
        ids = [rng.randrange(5, vocab - 10) for _ in range(a + b)] + [2]
        out.append(Encoded(ids, [-100] * a + ids[a:], a > MAX_SOURCE, False))
    return out


def pad_to(batch: dict, length: int, pad_id: int = 0) -> dict:
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def batches_for(scenario: str, examples: list[Encoded], batch: int, multiple: int = 8) -> list[dict]:
    if scenario == "official":
        return [pad_to(collate([e], 0), MAX_SOURCE + MAX_TARGET + 1) for e in examples]
    groups = length_grouped_batches([len(e.input_ids) for e in examples], batch, seed=0)
    out = []
    for g in groups:
        b = collate([examples[i] for i in g], 0)
        out.append(pad_to(b, -(-b["input_ids"].shape[1] // multiple) * multiple))  # the trainer pads to x8 on CUDA
    return out


# inductor: each input of a concatenation (e.g. the SwiGLU gradient [da | db]) written by its own
# producer straight into its slice, instead of one kernel with masked loads (release-specific
# option names: only those this torch has are passed).
CONCAT_KERNELS = {"max_pointwise_cat_inputs": 0, "max_complex_pointwise_cat_inputs": 0}


def concat_kernel_options() -> dict:
    import torch._inductor.config as inductor_config
    return {"options": {k: v for k, v in CONCAT_KERNELS.items() if hasattr(inductor_config, k)}}


# Compiled-parts variants: name -> settings; unset ones are the trainer's. kernels: SwiGLU and
# rotary + scatter as glmbot.model.kernels ops; pad: lengths padded to a multiple of; attention:
# set_training_attention's kind; pack: packed token rows padded to a multiple of; compile:
# torch.compile options.
COMPILE_VARIANTS = {
    "trainer": {},  # the trainer's CUDA settings
    "flash attention": {"attention": "flash"},
    "pack x64": {"pack": 64},
    "pack x128": {"pack": 128},
    "compiled swiglu/rotary": {"kernels": False},  # no glmbot.model.kernels ops: torch.compile's own
    "compiled swiglu/rotary + concat kernels": {"kernels": False, "compile": concat_kernel_options},
    "tuned blocks": {"compile": lambda: {"options": {"coordinate_descent_tuning": True}}},
    "autotune pointwise": {"compile": lambda: {"options": {"max_autotune_pointwise": True}}},
    "pad x1": {"pad": 1},
}


def apply_variant(model, name: str, device) -> int:
    """Compiles the model's dense parts as variant `name` says; returns its length multiple."""
    v = COMPILE_VARIANTS[name]
    torch._dynamo.reset()
    model.compile_dense(None, v.get("kernels", True), **v.get("compile", dict)())
    model.set_training_attention(training_attention(v.get("attention"), device))
    model.transformer.pack_multiple = v.get("pack", 1)  # the model's default, the trainer's
    return v.get("pad", 8)


def run_scenario(model, scenario: str, batches: list[dict], steps: int, P: int, device, warmup: int = 2,
                 warm_timed: bool = True) -> dict:
    """Times `steps` micro-batches after `warmup` others. The glmbot layouts (with warm_timed) first
    run the timed batches once too: each new length compiles (torch.compile) and plans (cuDNN) once, a one-time
    cost that a real run of thousands of steps over ~25 padded lengths spreads thin."""
    official = scenario == "official"
    timed = batches[warmup:warmup + steps]
    batches = batches[:warmup] + (timed if warm_timed and not official else []) + timed
    warmup = len(batches) - len(timed)
    encoder = PrefixEncoder(model.config, P).to(device)
    opt = torch.optim.AdamW(encoder.parameters(), lr=2e-2)
    model.train()
    if official:
        model.set_checkpointing(True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    real = padded = 0
    start = None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        kv = encoder.kv(model.dtype)
        prefix = PrefixKV(torch.nn.functional.dropout(PrefixKV.repeat(kv, batch["input_ids"].shape[0]).kv, 0.1))
        if official:  # the official model computes logits for every position
            loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         prefix=prefix, use_cache=False).loss
        else:
            loss = answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], prefix)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
    _sync(device)
    seconds = time.perf_counter() - start
    model.set_checkpointing(False)
    model.eval()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"scenario": scenario, "micro_batches": steps, "real_tokens": real, "seconds": seconds,
            "real_tok_s": real / seconds, "padded_tok_s": padded / seconds, "peak_gib": peak}


def training_attention(kind: str | None, device) -> str:
    """The variant's attention, or the trainer's default on CUDA; flash (the model default) on CPU."""
    return (kind or TRAINING_ATTENTION_CUDA) if device.type == "cuda" else "flash"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=8, help="timed micro-batches of the glmbot scenarios")
    ap.add_argument("--official-steps", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--P", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also run with the dense parts compiled (the trainer's CUDA default)")
    ap.add_argument("--variants", default="trainer",
                    help=f"comma-separated compiled variants: {', '.join(COMPILE_VARIANTS)}")
    ap.add_argument("--skip-eager", action="store_true", help="leave out the uncompiled glmbot layout")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.full_size:
        model = random_full_size(device)
    else:
        model, _ = load_base("builtin:tiny", device=device)
    params = count_parameters(model)
    examples = synthetic_examples(max(args.official_steps + 4, (args.steps + 6) * args.batch), model.config.padded_vocab_size)
    rate = matmul_tflops(device)
    rows = [run_scenario(model, "official", batches_for("official", examples, 1), args.official_steps, args.P, device)]
    model.set_training_attention(training_attention(None, device))  # as the trainer does
    if not args.skip_eager:
        rows.append(run_scenario(model, "glmbot", batches_for("glmbot", examples, args.batch), args.steps, args.P,
                                 device))
    for name in (args.variants.split(",") if args.compile else []):
        multiple = apply_variant(model, name, device)
        started = time.perf_counter()
        try:  # extra warm-up: the first lengths compile (dynamic shapes: once, then a few specialisations)
            rows.append(run_scenario(model, f"glmbot+compile ({name})",
                                     batches_for("glmbot", examples, args.batch, multiple), args.steps, args.P, device,
                                     warmup=6))
        except Exception as exc:  # noqa: BLE001 - a variant this torch or GPU cannot run is a result too
            print(f"variant {name!r} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
            continue
        print(f"variant {name!r}: {time.perf_counter() - started:.0f} s with its warm-up and compiles", flush=True)
    # The GPU's matmul rate drifts over a run (clocks, heat): the ceiling is the mean of a
    # measurement before the scenarios and one after them.
    rates = (rate, matmul_tflops(device))
    rate = sum(rates) / 2
    base = rows[0]["real_tok_s"]
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {params / 1e9:.2f}B params, "
          f"P={args.P}, bf16 matmul {rate:.0f} TFLOP/s (before {rates[0]:.0f}, after {rates[1]:.0f}), ceiling {rate * 1e12 / (4 * params):,.0f} tokens/s")
    print("| scenario | micro-batch | real tokens/s | tokens/s incl. padding | vs official | FLOP util. | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mb = 1 if r["scenario"] == "official" else args.batch
        util = r["real_tok_s"] * 4 * params / (rate * 1e12) if rate == rate else float("nan")
        r.update(util=util, vs_official=r["real_tok_s"] / base, params=params, matmul_tflops=rate)
        print(f"| {r['scenario']} | {mb} | {r['real_tok_s']:,.0f} | {r['padded_tok_s']:,.0f} | "
              f"{r['vs_official']:.1f}x | {util:.1%} | {r['peak_gib']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
