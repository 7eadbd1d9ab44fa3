"""Where do a newcomer's reworded questions go, and where does general chat go?

    python bench/routing_bench.py                # measurement: bench/routing/test2 (never tuned on)
    python bench/routing_bench.py --split test   # the first held-out set
    python bench/routing_bench.py --split dev    # the tuning domains

Domains are routed by `Router` alone (no model): each newcomer domain's training prompts, with the
repo's shop domains beside them (support's 225 questions, ads with glmbot.toml's keywords), as a
newcomer who adds a domain in this folder gets them.

- dev: the tuning domains (scripts/tuning_domains: gym, bakery, driving_school, property; their
  paraphrases), bench/routing/general_chat_dev.jsonl, support's held-out phrasings (support_dev.jsonl).
- test: the held-out domains (bench/domains: hr, it_helpdesk, pet_clinic; their paraphrases),
  bench/routing's library and dental (their rewordings), general_chat_test.jsonl and the shop's
  held-out routing set (glmbot/data/samples/routing_heldout.jsonl). The second look's settings were
  chosen on dev, and its general-chat threshold (router.GENERAL_SHARE) on dev and test together.
- test2: bench/routing/test2 (hotel, phone_repair, kindergarten and 80 general-chat messages, written
  after those choices and never tuned on) and the shop's held-out routing set.

Two scenarios: "alone" (one newcomer domain beside the shop's, once per domain) and "together"
(every newcomer domain of the split at once). Per router setting: rewordings that reach their own
domain, general chat sent to some domain (lower is better), and the shop's own held-out messages
routed right; and, with every domain together, the second message of a conversation that opened with
a domain's first training question: its rewordings that stay with it, general chat that goes to the plain
base ([routing] leave_off_topic). The rows use glmbot.toml's [routing]: without the second look and the general-chat reference (the
baseline), with the second look alone, and with both ([routing] general_chat: a message whose words are
closer to the reference of general chat than to every domain goes to the plain base).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from glmbot.config import load_settings  # noqa: E402
from glmbot.serving.router import DomainProfile, Router  # noqa: E402

SAMPLES = ROOT / "glmbot" / "data" / "samples"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def newcomer_domains(split: str) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (training prompts, rewordings of some of them)."""
    return {folder.name: ([r["prompt"] for r in jsonl(folder / "train.jsonl")],
                          [r["prompt"] for r in jsonl(folder / name)]) for folder, name in _folders(split)}


def first_rounds(split: str) -> dict[str, tuple[str, str]]:
    """name -> the domain's first training (question, answer): a conversation's opening round."""
    return {folder.name: tuple(jsonl(folder / "train.jsonl")[0][k] for k in ("prompt", "response"))
            for folder, _ in _folders(split)}


def _folders(split: str) -> list[tuple[Path, str]]:
    """(domain folder, its rewordings file's name) of the split."""
    if split == "dev":
        folders = [(ROOT / "scripts" / "tuning_domains" / n, "paraphrases.jsonl")
                   for n in ("gym", "bakery", "driving_school", "property")]
    elif split == "test":
        folders = [(ROOT / "bench" / "domains" / n, "paraphrases.jsonl") for n in ("hr", "it_helpdesk", "pet_clinic")]
        folders += [(ROOT / "bench" / "routing" / n, "rewordings.jsonl") for n in ("library", "dental")]
    else:
        folders = [(ROOT / "bench" / "routing" / "test2" / n, "rewordings.jsonl")
                   for n in ("hotel", "phone_repair", "kindergarten")]
    return folders


def shop_profiles(settings) -> list[DomainProfile]:
    return [DomainProfile("support", keywords=list(settings.domains["support"].keywords),
                          prompts=[r["prompt"] for r in jsonl(SAMPLES / "support_train.jsonl")]),
            DomainProfile("ads", keywords=list(settings.domains["ads"].keywords),
                          prompts=[r["content"] for r in jsonl(SAMPLES / "ads_train.jsonl")])]


def shop_checks(split: str) -> list[tuple[str, str]]:
    """(message, the domain it belongs to, 'base' for general chat) of the shop's own held-out data."""
    if split == "dev":
        return [(r["prompt"], "support") for r in jsonl(SAMPLES / "support_dev.jsonl")]
    return [(r["text"], r["domain"]) for r in jsonl(SAMPLES / "routing_heldout.jsonl")]


def general_chat(split: str, path: Path | None = None) -> list[str]:
    """The split's general-chat messages, or those of `path` (rows with "text" or "prompt")."""
    name = "test2/general_chat.jsonl" if split == "test2" else f"general_chat_{split}.jsonl"
    return [r.get("text", r.get("prompt")) for r in jsonl(path or ROOT / "bench" / "routing" / name)]


def measure(kwargs: dict, settings, domains, chat, shop, openings) -> dict[str, tuple[int, int]]:
    base = shop_profiles(settings)
    out = {}
    # a fresh project: one newcomer domain and nothing else
    hit = to_domain = 0
    for name, (prompts, rewordings) in domains.items():
        router = Router([DomainProfile(name, prompts=prompts)], **kwargs)
        hit += sum(router.route(text).domain == name for text in rewordings)
        to_domain += sum(router.route(text).domain is not None for text in chat)
    out["own project: rewordings to their domain"] = (hit, sum(len(rw) for _, rw in domains.values()))
    out["own project: general chat to it"] = (to_domain, len(chat) * len(domains))
    # beside the shop: one newcomer domain with the repo's support and ads
    hit = total = to_domain = 0
    for name, (prompts, rewordings) in domains.items():
        router = Router([*base, DomainProfile(name, prompts=prompts)], **kwargs)
        hit += sum(router.route(text).domain == name for text in rewordings)
        total += len(rewordings)
        to_domain += sum(router.route(text).domain is not None for text in chat)
    out["beside the shop: rewordings to their domain"] = (hit, total)
    out["beside the shop: general chat to a domain"] = (to_domain, len(chat) * len(domains))
    router = Router([*base, *(DomainProfile(n, prompts=p) for n, (p, _) in domains.items())], **kwargs)
    out["together: rewordings to their domain"] = (
        sum(router.route(t).domain == n for n, (_, rw) in domains.items() for t in rw),
        sum(len(rw) for _, rw in domains.values()))
    out["together: general chat to a domain"] = (sum(router.route(t).domain is not None for t in chat), len(chat))
    out["together: shop's held-out routed right"] = (
        sum((router.route(t).domain or "base") == want for t, want in shop), len(shop))
    # asked in a conversation that opened with the domain's first training question
    kept = moved = 0
    for name, (_, rewordings) in domains.items():
        kept += sum(_after(router, openings[name], t).domain == name for t in rewordings)
        moved += sum(_after(router, openings[name], t).domain is None for t in chat)
    out["after a domain question: rewordings kept"] = (kept, sum(len(rw) for _, rw in domains.values()))
    out["after a domain question: general chat to the base"] = (moved, len(chat) * len(domains))
    return out


def _after(router: Router, opening: tuple[str, str], text: str):
    """The route of `text` as the second message of a conversation whose first round is `opening`
    (question, answer), sent with its history as `glmbot chat` and the HTTP API send it."""
    router.forget("bench")
    router.route(opening[0], conversation_id="bench")
    return router.route(text, conversation_id="bench", history=[opening])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test", "test2"), default="test2")
    ap.add_argument("--config", default=str(ROOT / "glmbot.toml"))
    ap.add_argument("--chat", type=Path, help="general-chat messages to use instead of the split's, e.g. "
                    "bench/chat/newcomer_chat.jsonl (a newcomer's first messages, never tuned on)")
    args = ap.parse_args()
    settings = load_settings(args.config)
    routing = settings.routing
    configured = dict(fallback="base", min_score=routing.min_score, topic_change_score=routing.topic_change_score,
                      leave_off_topic=routing.leave_off_topic, second_look=routing.second_look,
                      general_chat=routing.general_chat)
    variants = [("words only (second_look = false, general_chat = false)",
                 {**configured, "second_look": False, "general_chat": False}),
                ("second look (second_look = true, general_chat = false)",
                 {**configured, "second_look": True, "general_chat": False}),
                ("second look and general chat (both true)", {**configured, "second_look": True, "general_chat": True})]
    domains, chat, shop = newcomer_domains(args.split), general_chat(args.split, args.chat), shop_checks(args.split)
    print(f"split {args.split}: {len(domains)} newcomer domains ({', '.join(domains)}), "
          f"{sum(len(rw) for _, rw in domains.values())} rewordings, {len(chat)} general-chat messages, "
          f"{len(shop)} shop held-out messages")
    openings = first_rounds(args.split)
    rows = [(label, measure(kwargs, settings, domains, chat, shop, openings)) for label, kwargs in variants]
    columns = list(rows[0][1])
    print("| setting | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, result in rows:
        print(f"| {label} | " + " | ".join(f"{a}/{b}" for a, b in (result[c] for c in columns)) + " |")


if __name__ == "__main__":
    main()
