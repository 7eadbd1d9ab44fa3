"""Teaching a domain a question it answered wrong: the user picks the right answer, the data file grows.

The builtin base answers rewordings of a domain's questions only in part; what was trained on comes
back reliably. So the chat's `/teach` turns a wrong answer into one more line of the domain's data:
`nearest_answers` offers the domain answers closest to the question (and to the wrong answer, which
often starts like the right one), `add_example` appends the question with the chosen answer to the
file `[domains.NAME] data` names, in that file's own columns, atomically. Retraining then learns it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from glmbot.config import Settings
from glmbot.errors import DataError
from glmbot.fileio import atomic_write_bytes
from glmbot.training.data import DELIMITERS, Example, LoadedData, resolve_data_path
from glmbot.training.plan import DataSpec, config_data_path

_NOT_TEXT = re.compile(r"[\W_]+")  # punctuation and spaces say nothing of which answer is meant


@dataclass(frozen=True)
class Candidate:
    """One answer of a domain's data that a question may have meant."""

    domain: str
    prompt: str     # the data's question with this answer (the closest one when several share it)
    response: str
    score: float    # 0..1, character overlap with the question or with the answer that was given


@dataclass(frozen=True)
class Added:
    """What add_example did: the file, the line the example is on and how many examples it holds now."""

    path: Path
    line: int
    examples: int
    already: bool = False  # the file held this question with this answer already: nothing written


def _grams(text: str) -> Counter[str]:
    """Characters and character pairs of `text` without punctuation: Chinese rewordings keep more of
    these than of jieba's words (笔记本坏了 / 电脑坏了 share 坏了 but no word)."""
    chars = _NOT_TEXT.sub("", text.casefold())
    return Counter(list(chars) + [chars[i:i + 2] for i in range(len(chars) - 1)])


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[g] for g, count in a.items() if g in b)
    norm = math.sqrt(sum(c * c for c in a.values()) * sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def nearest_answers(question: str, given: str, data: dict[str, list[Example]], k: int = 3) -> list[Candidate]:
    """The k distinct answers of `data` (domain -> examples) that `question` most likely meant.

    An answer scores the larger of: its question's overlap with `question`, and its own overlap with
    `given` (the answer the model gave: a wrong answer often starts like the right one).
    """
    asked, answered = _grams(question), _grams(given)
    best: dict[tuple[str, str], Candidate] = {}
    for domain, examples in data.items():
        for ex in examples:
            score = max(_cosine(asked, _grams(ex.prompt)), _cosine(answered, _grams(ex.response)) if given else 0.0)
            key = (domain, ex.response.strip())
            if key not in best or score > best[key].score:
                best[key] = Candidate(domain, ex.prompt, ex.response.strip(), score)
    ranked = sorted(best.values(), key=lambda c: (-c.score, c.domain, c.prompt))
    return ranked[:k]


def teachable_data(settings: Settings) -> dict[str, LoadedData]:
    """The data of every domain whose data is a file of the user's own (builtin samples and plugin
    data sets are not glmbot's to change); a file that cannot be read raises its DataError (file:line)."""
    return {name: _load(settings, name) for name in teachable_domains(settings)}


def teachable_domains(settings: Settings) -> list[str]:
    """The domains with a data file of the user's own (where a taught example can go), sorted."""
    return sorted(name for name, d in settings.domains.items()
                  if not writable_data_problem(name, config_data_path(d.data, settings.root)))


def writable_data_problem(domain: str, data: str) -> str:
    """Why `domain`'s data cannot take a taught example, with the fix; '' when it can."""
    if not data:
        return (f"domain {domain!r} has no data file in glmbot.toml; give it one: "
                f"glmbot domains set {domain} --data FILE.jsonl")
    if data.startswith("builtin:"):
        try:
            shipped = f" ({resolve_data_path(data)})"
        except DataError:
            shipped = ""
        return (f"domain {domain!r} trains on glmbot's builtin sample {data}, which /teach does not change; "
                f"copy it{shipped} to a file of your own and point the domain at it: "
                f"glmbot domains set {domain} --data FILE.jsonl")
    if not Path(data).expanduser().is_file():
        return (f"domain {domain!r} trains on {data!r}, which is not a file here (a plugin data set?); "
                f"point the domain at a JSONL or CSV file: glmbot domains set {domain} --data FILE.jsonl")
    return ""


def _load(settings: Settings, domain: str) -> LoadedData:
    return DataSpec.for_domain(settings.domains[domain], settings.root).load_data("train")


def add_example(settings: Settings, domain: str, question: str, answer: str) -> Added:
    """Append `question` -> `answer` to `domain`'s data file in its own columns, atomically.

    Refused (DataError naming the line) when the file already answers the question differently:
    the prefix would learn a blend of both answers.
    """
    if domain not in settings.domains:
        raise DataError(f"domain {domain!r} is not in glmbot.toml; known: {', '.join(sorted(settings.domains))}")
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        raise DataError("both the question and its answer need some text")
    path = config_data_path(settings.domains[domain].data, settings.root)
    problem = writable_data_problem(domain, path)
    if problem:
        raise DataError(problem)
    # The web chat and a terminal chat may add to one file at once: without the lock, the later
    # read-append-replace would drop the earlier line.
    file = str(Path(path).expanduser().resolve())
    with FileLock(Path(tempfile.gettempdir()) / f"glmbot-{hashlib.sha256(file.encode()).hexdigest()[:16]}.lock"):
        return _append(settings, domain, question, answer)


def _append(settings: Settings, domain: str, question: str, answer: str) -> Added:
    loaded = _load(settings, domain)
    for line, ex in enumerate(loaded.examples, start=1):
        if ex.prompt.strip() == question and not ex.history:
            if ex.response.strip() == answer:
                return Added(loaded.path, line, len(loaded.examples), already=True)
            raise DataError(f"{loaded.path} (example {line}) already answers {question!r} with "
                            f"{ex.response.strip()!r}; edit that line instead of adding a second answer")
    raw = loaded.path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    row = {loaded.columns.prompt: question, loaded.columns.response: answer}
    atomic_write_bytes(loaded.path, raw + _line(loaded.path, raw, row).encode("utf-8"))
    count = len(loaded.examples) + 1
    return Added(loaded.path, count, count)


def _line(path: Path, raw: bytes, row: dict[str, str]) -> str:
    """`row` as one more line of the data file: a JSON object, or a CSV/TSV row in its header's order."""
    delimiter = DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        return json.dumps(row, ensure_ascii=False) + "\n"
    lines = raw.decode("utf-8-sig").splitlines()
    header = next(next(csv.reader([line], delimiter=delimiter)) for line in lines if line.strip())
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerow([row.get(c.strip(), "") for c in header])
    return out.getvalue()


class Teacher:
    """What the chat's /teach needs; reads the domains' files afresh each time (they grow)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def candidates(self, question: str, given: str, k: int = 5) -> list[Candidate]:
        # The right answer of a paraphrase is among the first 5 for 36 of 40 (tuning domains), 3: 35.
        data = {name: loaded.examples for name, loaded in teachable_data(self.settings).items()}
        return nearest_answers(question, given, data, k)

    def add(self, domain: str, question: str, answer: str) -> Added:
        return add_example(self.settings, domain, question, answer)

    def domains(self) -> list[str]:
        return teachable_domains(self.settings)

    def as_taught(self, question: str, answer: str) -> bool:
        """Whether some domain's data holds `question` (punctuation and spaces aside) with this very
        answer: then there is nothing to teach, and the chat keeps its /teach tip for later."""
        asked, given = _NOT_TEXT.sub("", question.casefold()), answer.strip()
        return any(_NOT_TEXT.sub("", ex.prompt.casefold()) == asked and ex.response.strip() == given
                   for loaded in teachable_data(self.settings).values() for ex in loaded.examples)

    def has_data(self) -> bool:
        return bool(self.domains())


__all__ = ["Added", "Candidate", "Teacher", "add_example", "nearest_answers", "teachable_data", "teachable_domains",
           "writable_data_problem"]
