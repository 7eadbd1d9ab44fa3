"""Build the builtin tiny base (`builtin:tiny`): tokenizer + pretrained ChatGLM2-architecture model.

    python scripts/build_tiny_base.py --out glmbot/model/builtin/tiny [--device cuda] [--epochs 12]

1. Generate the project's own Chinese corpus (scripts/tiny_corpus.py): many shops' support
   answers in the shipped phrasings, ad copy, small talk.
2. Train a SentencePiece tokenizer on it with the settings that keep ChatGLM2's behaviour:
   identity normalisation (full-width ：，？ stay), byte fallback (newline is <0x0A>), no dummy
   prefix, short pieces so Chinese pieces do not swallow clauses.
3. Pretrain a small model of the ChatGLM2 architecture on the official chat format, loss on the
   answers (+eos), so that without a prefix it chats, and with one it can learn a shop's facts.
4. Write config.json, model.safetensors (bf16, to stay small), tokenizer files, build_info.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_corpus import pretraining_conversations  # noqa: E402

from glmbot.model.configuration import ChatGLMConfig  # noqa: E402
from glmbot.model.modeling import ChatGLMForConditionalGeneration  # noqa: E402
from glmbot.model.tokenizer import ChatGLMTokenizer, build_prompt  # noqa: E402

MAX_LEN = 192


def train_tokenizer(conversations, folder: Path, vocab_size: int) -> ChatGLMTokenizer:
    lines = []
    for conv in conversations:
        for i, (query, response) in enumerate(conv):
            # SentencePiece reads lines: split prompts at their newlines.
            lines.extend(build_prompt(query, conv[:i]).split("\n"))
            lines.extend(response.split("\n"))
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(line for line in lines if line), encoding="utf-8")
        spm.SentencePieceTrainer.Train(
            input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, max_sentencepiece_length=4,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=4, minloglevel=2,
            input_sentence_size=2_000_000, shuffle_input_sentence=False, hard_vocab_limit=False)
    return ChatGLMTokenizer(folder / "tokenizer.model")


def build_examples(conversations, tok: ChatGLMTokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) for every round: the prompt with its history, answer + eos as target."""
    examples = []
    for conv in conversations:
        for i, (query, response) in enumerate(conv):
            prompt = tok.encode(build_prompt(query, conv[:i]))
            answer = tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
            prompt = prompt[:2] + prompt[2:][-(MAX_LEN - len(answer) - 2):]  # keep [gMASK] sop, drop oldest history
            examples.append((prompt + answer, [-100] * len(prompt) + answer))
    return examples


def batches(examples, batch_size: int, rng: random.Random):
    """Length-grouped batches, padded per batch (right padding is fine for training)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + rng.random())
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    for chunk in chunks:
        longest = max(len(examples[i][0]) for i in chunk)
        ids = torch.zeros(len(chunk), longest, dtype=torch.long)
        labels = torch.full((len(chunk), longest), -100, dtype=torch.long)
        mask = torch.zeros(len(chunk), longest, dtype=torch.long)
        for r, i in enumerate(chunk):
            x, y = examples[i]
            ids[r, :len(x)] = torch.tensor(x)
            labels[r, :len(y)] = torch.tensor(y)
            mask[r, :len(x)] = 1
        yield ids, labels, mask


@torch.no_grad()
def greedy_answer(model, tok, query: str, device, max_new_tokens: int = 40) -> str:
    ids = torch.tensor([tok.build_chat_input(query)], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:])


def pretrain(model, examples, tok, args, device) -> list[float]:
    rng = random.Random(args.seed)
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, total // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    model.train()
    losses, step, start = [], 0, time.time()
    for epoch in range(args.epochs):
        epoch_loss, n = 0.0, 0
        for ids, labels, mask in batches(examples, args.batch_size, rng):
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(ids, attention_mask=mask, labels=labels, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            epoch_loss, n, step = epoch_loss + loss.item(), n + 1, step + 1
        losses.append(epoch_loss / n)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {losses[-1]:.3f}  {time.time() - start:.0f}s", flush=True)
        if time.time() - start > args.max_minutes * 60:
            print("time budget reached, stopping early", flush=True)
            break
    model.eval()
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("glmbot/model/builtin/tiny"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab-size", type=int, default=3000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=30.0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    conversations = pretraining_conversations(seed=args.seed)
    corpus_sha = hashlib.sha256(json.dumps(conversations, ensure_ascii=False).encode()).hexdigest()
    tok = train_tokenizer(conversations, args.out, args.vocab_size)
    examples = build_examples(conversations, tok)
    print(f"{len(conversations)} conversations, {len(examples)} examples, "
          f"{sum(len(x) for x, _ in examples)} tokens, vocab {tok.sp_size}", flush=True)

    config = ChatGLMConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.hidden // 32, kv_channels=32,
        multi_query_group_num=2, ffn_hidden_size=args.hidden * 27 // 8, seq_length=2048,
        padded_vocab_size=-(-tok.vocab_size // 64) * 64)
    model = ChatGLMForConditionalGeneration(config).to(device)
    losses = pretrain(model, examples, tok, args, device)

    for query in ("你好", "你是谁", "3加5等于几", "请问多久发货？", "类型#裙*颜色#白色*风格#清新"):
        print(f"{query!r} -> {greedy_answer(model, tok, query, device)!r}", flush=True)

    model = model.to("cpu")
    model.config.torch_dtype = "bfloat16"
    model.config.save_pretrained(args.out)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(args.out)
    (args.out / "tokenizer.vocab").unlink(missing_ok=True)
    info = {"corpus_sha256": corpus_sha, "conversations": len(conversations), "examples": len(examples),
            "epochs_run": len(losses), "final_loss": round(losses[-1], 4), "lr": args.lr, "seed": args.seed,
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
            "built": time.strftime("%Y-%m-%d")}
    (args.out / "build_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
