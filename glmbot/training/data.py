"""Training data: JSONL loading with clear errors, official preprocessing, per-batch padding.

Two shapes are read: chat (`prompt`, `response`, optional `history` as [[query, response], ...])
and AdvertiseGen (`content` -> `summary`). Each example becomes the official layout
`[gMASK] sop prompt | answer | eos` with labels -100 on the prompt, but batches are padded to
their own longest row and grouped by length instead of padded to max_source + max_target + 1.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from glmbot.errors import DataError
from glmbot.model.tokenizer import ChatGLMTokenizer, build_prompt

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
COLUMNS = {"chat": ("prompt", "response", "history"), "advertisegen": ("content", "summary", "")}


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_truncated: bool
    answer_truncated: bool

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != -100)


@dataclass
class DataSummary:
    samples: int
    prompts_truncated: int
    answers_truncated: int
    prompt_tokens: int
    answer_tokens: int
    longest: int
    sha256: str = ""
    source: str = ""


def resolve_data_path(name: str | Path) -> Path:
    """'builtin:support' -> the shipped support_train.jsonl; 'builtin:support_dev' likewise; else a path."""
    name = str(name)
    if name.startswith("builtin:"):
        stem = name[len("builtin:"):]
        stem = stem if stem.endswith(("_train", "_dev")) else stem + "_train"
        path = SAMPLES_DIR / f"{stem}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in SAMPLES_DIR.glob("*_*.jsonl"))
            raise DataError(f"no builtin data set {name!r}; shipped ones: {', '.join('builtin:' + k for k in known)}")
        return path
    path = Path(name).expanduser()
    if path.is_file():
        return path
    datasets = plugin_datasets()
    if name in datasets:
        path = Path(datasets[name]())
        if not path.is_file():
            raise DataError(f"plugin data set {name!r} gave {path}, which does not exist")
        return path
    named = f" or a plugin data set ({', '.join(sorted(datasets))})" if datasets else ""
    raise DataError(f"data file {path} does not exist; pass a JSONL file, builtin:support{named}")


def plugin_datasets() -> dict:
    """Data sets that plugins registered (register_datasets): name -> loader() -> JSONL path."""
    from glmbot.plugins import get_manager

    found: dict = {}
    get_manager().call("register_datasets", register=lambda name, loader: found.__setitem__(name, loader))
    return found


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _history(value, where: str) -> tuple[tuple[str, str], ...]:
    if value in (None, ""):
        return ()
    if not isinstance(value, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value):
        raise DataError(f"{where}: history must be a list of [query, response] string pairs, got {value!r:.80}")
    return tuple((q, r) for q, r in value)


def load_examples(source: str | Path, fmt: str = "chat", prompt_column: str = "", response_column: str = "",
                  history_column: str | None = None) -> list[Example]:
    """Examples of a JSONL file; any problem raises DataError naming file:line and the fix."""
    if fmt not in COLUMNS:
        raise DataError(f"unknown data format {fmt!r}: use one of {', '.join(COLUMNS)}")
    path = resolve_data_path(source)
    default_p, default_r, default_h = COLUMNS[fmt]
    p_col, r_col = prompt_column or default_p, response_column or default_r
    h_col = default_h if history_column is None else history_column
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8") from None
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        missing = [c for c in (p_col, r_col) if c not in row]
        if missing:
            raise DataError(f"{where}: missing column {missing[0]!r}; columns found: {', '.join(sorted(row))} "
                            f"(set prompt_column/response_column or --format)")
        prompt, response = row[p_col], row[r_col]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{where}: {p_col!r} and {r_col!r} must be strings")
        examples.append(Example(prompt, response, _history(row.get(h_col), where) if h_col else ()))
    if not examples:
        raise DataError(f"{path} holds no examples; add JSON lines with {p_col!r} and {r_col!r}")
    return examples


def encode_example(tok: ChatGLMTokenizer, ex: Example, max_source_length: int, max_target_length: int) -> Encoded:
    """Official layout: a = prompt ids (with [gMASK] sop), b = answer ids; a + b + eos, labels -100 on a.

    A too-long multi-turn prompt first loses its oldest rounds (so the current question survives),
    then is cut at max_source_length as the official code does.
    """
    history = list(ex.history)
    a = tok.encode(build_prompt(ex.prompt, history))
    prompt_truncated = len(a) > max_source_length
    while len(a) > max_source_length and history:
        history.pop(0)
        a = tok.encode(build_prompt(ex.prompt, history))
    a = a[:max_source_length]
    b_full = tok.encode(ex.response, add_special_tokens=False)
    b = b_full[:max_target_length]
    return Encoded(a + b + [tok.eos_token_id], [-100] * len(a) + b + [tok.eos_token_id],
                   prompt_truncated, len(b_full) > max_target_length)


def encode_all(tok: ChatGLMTokenizer, examples: list[Example], max_source_length: int,
               max_target_length: int) -> tuple[list[Encoded], DataSummary]:
    encoded = [encode_example(tok, ex, max_source_length, max_target_length) for ex in examples]
    if all(e.answer_tokens <= 1 for e in encoded):
        raise DataError("every answer is empty after tokenisation/truncation; check the response column and "
                        "max_target_length")
    summary = DataSummary(
        samples=len(encoded),
        prompts_truncated=sum(e.prompt_truncated for e in encoded),
        answers_truncated=sum(e.answer_truncated for e in encoded),
        prompt_tokens=sum(len(e.input_ids) - e.answer_tokens for e in encoded),
        answer_tokens=sum(e.answer_tokens for e in encoded),
        longest=max(len(e.input_ids) for e in encoded),
    )
    return encoded, summary


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of similar length (less padding), in random order; deterministic per seed."""
    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[Encoded], pad_id: int, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its own longest row (rounded up to pad_multiple): input_ids, labels,
    attention_mask, each (B, T)."""
    longest = -(-max(len(r.input_ids) for r in rows) // pad_multiple) * pad_multiple
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
