"""Deterministic Chinese pretraining corpus for the builtin tiny base model.

    python scripts/tiny_corpus.py OUT.jsonl [SEED]

Three parts: after-sales Q&A for many fictional shops (the shipped support phrasings, answered
with other shops' facts (each drawn from pools that include 小鹿商城's values), plain-voice AdvertiseGen copy (never 「鹿语」's), and
small talk. The base thus knows each domain's wording, and a prefix only has to learn one
shop's facts or one brand's voice.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

if __package__:
    from .ad_copy import ad_request, content_string, generic_ad, random_attributes
    from .make_sample_data import sample_files
    from .small_talk import small_talk_conversations
    from .support_intents import INTENTS, SHOP_GREETING, other_shops
else:  # run as `python scripts/tiny_corpus.py`: this folder is on sys.path
    from ad_copy import ad_request, content_string, generic_ad, random_attributes
    from make_sample_data import sample_files
    from small_talk import small_talk_conversations
    from support_intents import INTENTS, SHOP_GREETING, other_shops

Round = tuple[str, str]
Conversation = list[Round]

SHOPS = 75
ROUNDS_PER_INTENT = 2  # per shop: 75 shops x 34 intents x 2 ~ 5,100 support rounds
AD_CONVERSATIONS = 2600
SMALL_TALK_CONVERSATIONS = 2000
MULTI_TURN_SHARE = 0.15
_POLITE_OPENERS = ("请问", "你好，", "您好，请问", "想问一下，", "客服你好，")


def _held_out() -> tuple[set[str], set[str]]:
    """Prompts and ad attribute strings the corpus must not contain (dev, routing, brand ads)."""
    files = sample_files()
    prompts = {row["prompt"] for row in files["support_dev.jsonl"]}
    prompts |= {row["text"] for row in files["routing_heldout.jsonl"]}
    contents = {row["content"] for name in ("ads_train.jsonl", "ads_dev.jsonl") for row in files[name]}
    return prompts, contents | prompts


def _shop_rounds(rng: random.Random, shop: dict[str, str], held_out: set[str]) -> list[Round]:
    rounds = []
    for intent in INTENTS:
        for phrasing in rng.sample((*intent.train, *intent.extra), ROUNDS_PER_INTENT):
            query = rng.choice(_POLITE_OPENERS) + phrasing if rng.random() < 0.2 else phrasing
            if query not in held_out:
                rounds.append((query, rng.choice(intent.answers).format(**shop)))
    return rounds


def _group(rng: random.Random, rounds: list[Round], opener: Round | None = None) -> list[Conversation]:
    # most rounds stand alone; ~15% of conversations chain 2-3 rounds, sometimes after `opener`
    rng.shuffle(rounds)
    conversations, i = [], 0
    while i < len(rounds):
        size = rng.choice((2, 3)) if rng.random() < MULTI_TURN_SHARE else 1
        chunk = rounds[i:i + size]
        i += size
        if size > 1 and opener and rng.random() < 0.3:
            chunk = [opener, *chunk[:2]]
        conversations.append(chunk)
    return conversations


def support_conversations(rng: random.Random, held_out: set[str]) -> list[Conversation]:
    """After-sales Q&A for `SHOPS` fictional shops, each answering from its own fact sheet."""
    conversations = []
    for shop in other_shops(rng, SHOPS):
        greeting = (rng.choice(("你好", "您好", "在吗？")), SHOP_GREETING.format(shop=shop["shop"]))
        conversations += _group(rng, _shop_rounds(rng, shop, held_out), greeting)
    return conversations


def ad_conversations(rng: random.Random, held_out: set[str]) -> list[Conversation]:
    """Plain-voice ads: mostly attribute strings, ~10% natural-language requests."""
    conversations = []
    while len(conversations) < AD_CONVERSATIONS:
        attributes = random_attributes(rng)
        query = ad_request(rng, attributes) if rng.random() < 0.1 else content_string(attributes)
        if query not in held_out and content_string(attributes) not in held_out:
            conversations.append([(query, generic_ad(rng, attributes))])
    return conversations


def corpus_parts(seed: int = 0) -> dict[str, list[Conversation]]:
    """The corpus split by domain, before shuffling."""
    rng = random.Random(seed)
    prompts, contents = _held_out()
    return {
        "support": support_conversations(rng, prompts),
        "ads": ad_conversations(rng, contents),
        "small_talk": [c for c in small_talk_conversations(rng, SMALL_TALK_CONVERSATIONS) if c[-1][0] not in prompts],
    }


def pretraining_conversations(seed: int = 0) -> list[list[tuple[str, str]]]:
    """All conversations, shuffled; each is a list of (query, response) rounds."""
    conversations = [c for part in corpus_parts(seed).values() for c in part]
    random.Random(seed).shuffle(conversations)
    return conversations


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python scripts/tiny_corpus.py OUT.jsonl [SEED]")
    seed = int(argv[2]) if len(argv) > 2 else 0
    conversations = pretraining_conversations(seed)
    with Path(argv[1]).open("w", encoding="utf-8") as f:
        for rounds in conversations:
            (prompt, response), history = rounds[-1], [list(r) for r in rounds[:-1]]
            row = {"history": history, "prompt": prompt, "response": response}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for name, part in corpus_parts(seed).items():
        print(f"{name}: {len(part)} conversations")
    chars = sum(len(q) + len(r) for rounds in conversations for q, r in rounds)
    rounds_total = sum(len(rounds) for rounds in conversations)
    print(f"total: {len(conversations)} conversations, {rounds_total} rounds, {chars} characters")


if __name__ == "__main__":
    main(sys.argv)
