"""How the plain base (no prefix) answers a newcomer's first general-chat messages.

    python bench/plain_chat.py                                 # the shipped builtin base
    python bench/plain_chat.py --base builtin:tiny --base build/chat2/tiny --out answers.json

bench/chat/newcomer_chat.jsonl holds 80 messages (greetings, jokes/stories/poems, arithmetic, simple
facts, requests beyond a small model, chit-chat) written by a helper before the base's chat corpus
of 2026-12-06 and kept out of it (scripts/tiny_corpus.py drops any conversation that contains one).
Each message goes to the plain base as its own conversation through the serving engine, greedy, as
`glmbot chat` sends it (with [generation] loop_stop). Per kind and base: answers that ended on their
own (eos), answers cut as a loop (loop_stop) or by max_new_tokens, and arithmetic answered right
(the number in the answer equals the sum). Whether an answer is *sensible* needs a reader: --out
writes every answer for that, and the table prints them side by side with --show. Rows marked
"in_shipped_corpus" (9: 你好, 你是谁？, two time questions, five facts) are questions of the shipped base's
corpus word for word (written before this file): its answers to them are recall; --show marks them [seen].
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glmbot import load_base  # noqa: E402
from glmbot.config import Settings  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402
from glmbot.serving.requests import GenerationRequest  # noqa: E402

DATA = ROOT / "bench" / "chat" / "newcomer_chat.jsonl"
_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")}
_ADD, _SUB, _MUL, _DIV = operator.add, operator.sub, operator.mul, operator.truediv
_OPS = {"加": _ADD, "+": _ADD, "减": _SUB, "-": _SUB, "乘以": _MUL, "乘": _MUL, "*": _MUL, "×": _MUL, "x": _MUL,
        "除以": _DIV, "除": _DIV, "/": _DIV, "÷": _DIV}


def chinese_to_int(text: str) -> int | None:
    """一 -> 1, 十二 -> 12, 二十 -> 20, 12 -> 12; None for anything else."""
    if text.isdigit():
        return int(text)
    if text and all(c in _DIGITS for c in text) and len(text) == 1:
        return _DIGITS[text]
    m = re.fullmatch(r"([一二三四五六七八九]?)十([一二三四五六七八九]?)", text)
    if m:
        return (_DIGITS[m[1]] if m[1] else 1) * 10 + (_DIGITS[m[2]] if m[2] else 0)
    return None


def expected_result(prompt: str) -> int | None:
    ops = "|".join(sorted(map(re.escape, _OPS), key=len, reverse=True))
    m = re.search(rf"([0-9]+|[零一二三四五六七八九十]+)\s*({ops})\s*([0-9]+|[零一二三四五六七八九十]+)", prompt)
    if not m:
        return None
    a, b = chinese_to_int(m[1]), chinese_to_int(m[3])
    if a is None or b is None or (_OPS[m[2]] is _DIV and b == 0):
        return None
    value = _OPS[m[2]](a, b)
    return int(value) if value == int(value) else None


def numbers_in(text: str) -> set[int]:
    found = {int(n) for n in re.findall(r"[0-9]+", text)}
    found |= {v for n in re.findall(r"[零一二三四五六七八九十]+", text) if (v := chinese_to_int(n)) is not None}
    return found


def answers(base: str, rows: list[dict], max_new_tokens: int) -> list[tuple[str, str]]:
    model, tok = load_base(base, device="cpu")
    with Engine(model, tok, settings=Settings(), max_batch_size=16) as engine:
        results = engine.generate_many([GenerationRequest(query=r["prompt"], do_sample=False,
                                                          max_new_tokens=max_new_tokens) for r in rows])
    return [(r.text, {"stop": "eos"}.get(r.finish_reason, r.finish_reason)) for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", help="builtin:tiny or a model folder; repeat to compare")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, help="write every answer here (JSON)")
    ap.add_argument("--show", action="store_true", help="print every answer")
    args = ap.parse_args()
    bases = args.base or ["builtin:tiny"]
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = {b: answers(b, rows, args.max_new_tokens) for b in bases}
    print(f"{len(rows)} messages of {DATA.relative_to(ROOT)}; per kind: ended by eos / cut as a loop / cut at "
          f"{args.max_new_tokens} tokens; arithmetic: right\n")
    header = "| kind | n | " + " | ".join(bases) + " |"
    print(header)
    print("|" + "---|" * (2 + len(bases)))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    totals = {b: Counter() for b in bases}
    for kind in kinds:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        cells = []
        for b in bases:
            c = Counter(results[b][i][1] for i in idx)
            totals[b].update(c)
            cell = f"{c['eos']} / {c['loop']} / {c['length']}"
            if kind == "arithmetic":
                right = sum(expected_result(rows[i]["prompt"]) in numbers_in(results[b][i][0]) for i in idx
                            if expected_result(rows[i]["prompt"]) is not None)
                totals[b]["right"] += right
                cell += f"; right {right}"
            cells.append(cell)
        print(f"| {kind} | {len(idx)} | " + " | ".join(cells) + " |")
    print(f"| all | {len(rows)} | " + " | ".join(f"{t['eos']} / {t['loop']} / {t['length']}" for t in totals.values()) + " |")
    if args.show:
        for i, r in enumerate(rows):
            seen = " [seen]" if r.get("in_shipped_corpus") else ""
            print(f"\n[{r['kind']}]{seen} {r['prompt']}")
            for b in bases:
                text, how = results[b][i]
                print(f"  {b} ({how}): {text[:120]}")
    if args.out:
        blob = {b: [{"prompt": r["prompt"], "kind": r["kind"], "answer": results[b][i][0], "ended": results[b][i][1]}
                    for i, r in enumerate(rows)] for b in bases}
        args.out.write_text(json.dumps(blob, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
