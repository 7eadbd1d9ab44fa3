"""Training data: JSONL (or CSV/TSV) loading with clear errors, official preprocessing, per-batch padding.

A spreadsheet's export works as it is: a .csv or .tsv file with a header row names the columns
(`prompt,response` or `content,summary`; a history cell holds the same JSON list as JSONL's).
Two shapes are read: chat (`prompt`, `response`, optional `history` as [[query, response], ...])
and AdvertiseGen (`content` -> `summary`); which one a file holds is read from its first row's
columns (`fmt="auto"`), a named format or column only overrides. Each example becomes the official layout
`[gMASK] sop prompt | answer | eos` with labels -100 on the prompt, but batches are padded to
their own longest row and grouped by length instead of padded to max_source + max_target + 1.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from glmbot.errors import DataError
from glmbot.model.tokenizer import ChatGLMTokenizer

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
AUTO = "auto"  # detect the format from the columns
DELIMITERS = {".csv": ",", ".tsv": "\t"}  # spreadsheet exports, read by their header row
WORKBOOKS = {".xlsx": "Excel", ".xls": "Excel", ".xlsm": "Excel", ".ods": "OpenDocument", ".numbers": "Numbers"}


@dataclass(frozen=True)
class Columns:
    """Which format a data file has and which of its columns hold the prompt, answer and history."""

    fmt: str
    prompt: str
    response: str
    history: str = ""  # "" = no history column

    def describe(self) -> str:
        return f"{self.fmt}: {self.prompt} -> {self.response}{f' (+ {self.history})' if self.history else ''}"


FORMATS = {"chat": Columns("chat", "prompt", "response", "history"),
           "advertisegen": Columns("advertisegen", "content", "summary")}


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
    raise DataError(f"data file {path} does not exist; pass the path of a .jsonl, .csv or .tsv file (or builtin:support, "
                    f"the shipped sample){named}")


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
    if isinstance(value, str):  # a CSV cell: the JSON list of a JSONL line, as text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: the history cell must be a JSON list of [query, response] pairs, got "
                            f"{value!r:.80}") from None
    if not isinstance(value, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value):
        raise DataError(f"{where}: history must be a list of [query, response] string pairs, got {value!r:.80}")
    return tuple((q, r) for q, r in value)


@dataclass(frozen=True)
class LoadedData:
    """The examples of one data file, with the file and the columns they were read from."""

    path: Path
    columns: Columns
    examples: list[Example]


def conflicting_answers(examples: list[Example]) -> list[str]:
    """Questions (with the same earlier rounds) that the data answers in more than one way, in order:
    a prefix learns a blend of such answers (a newcomer's edit left 有淋浴吗？ with two)."""
    answers: dict[tuple, set[str]] = {}
    for ex in examples:
        answers.setdefault((ex.prompt.strip(), ex.history), set()).add(ex.response.strip())
    return [prompt for (prompt, _), seen in answers.items() if len(seen) > 1]


def detect_format(columns: list[str], where: str) -> str:
    """'chat' or 'advertisegen' from a row's column names; DataError naming the columns when neither or both fit."""
    fits = [name for name, c in FORMATS.items() if {c.prompt, c.response} <= set(columns)]
    seen = ", ".join(columns) or "none"  # in the order of the header or the JSON object
    if len(fits) == 1:
        return fits[0]
    shapes = " or ".join(f"{c.prompt}/{c.response} ({name})" for name, c in FORMATS.items())
    if fits:
        raise DataError(f"{where}: columns found: {seen}, which fit both {shapes}; "
                        f"pick one with --format {' or --format '.join(fits)}")
    wanted = {name for c in FORMATS.values() for name in (c.prompt, c.response)}
    typos = [f"{found!r} for {close[0]!r}" for found in sorted(set(columns) - wanted)
             if (close := difflib.get_close_matches(found, sorted(wanted), n=1, cutoff=0.75))]
    # A Chinese keyboard's comma does not separate a header's cells: "prompt，response" is one column.
    wide = [found for found in columns if "，" in found and set(found.replace(" ", "").split("，")) & wanted]
    flags = (f"--prompt-column {columns[0]} --response-column {columns[1]}" if len(columns) == 2
             else "--prompt-column COL --response-column COL")
    raise DataError(f"{where}: cannot tell the data format: columns found: {seen}, but it needs {shapes}"
                    + (f" (a typo? {', '.join(typos)})" if typos else "")
                    + (f" ({wide[0]!r} is one column: cells are split at an ASCII comma ',', not at '，')"
                       if wide else "")
                    + f"; rename the columns, or name them with {flags}")


def resolve_columns(first_row: dict, where: str, fmt: str = AUTO, prompt_column: str = "",
                    response_column: str = "", history_column: str | None = None) -> Columns:
    """The format and columns to read: detected from `first_row` unless `fmt` names one; columns override."""
    if fmt not in (AUTO, *FORMATS):
        raise DataError(f"unknown data format {fmt!r}: use one of {', '.join((AUTO, *FORMATS))}")
    if fmt == AUTO:
        # Named columns say where prompt and answer are: no need to guess, chat is the shape with history.
        fmt = "chat" if prompt_column or response_column else detect_format(list(first_row), where)
    base = FORMATS[fmt]
    return Columns(fmt, prompt_column or base.prompt, response_column or base.response,
                   base.history if history_column is None else history_column)


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(file:line, object) of every non-blank line of a JSONL file (or row of a CSV/TSV file);
    DataError naming file:line otherwise."""
    if path.suffix.lower() in WORKBOOKS:
        raise DataError(f"{path} is a workbook ({WORKBOOKS[path.suffix.lower()]}), which glmbot does not read: save "
                        "the sheet as CSV UTF-8 (a header row such as prompt,response, then one question and "
                        "answer a row) and pass the .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows Notepad) is dropped
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        # utf-8-sig counts exc.start after the mark it dropped: without the shift, a bad byte that
        # opens a line would be blamed on the line before.
        start = exc.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        line = raw[:start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8") from None
    if path.suffix.lower() in DELIMITERS:
        return _table_rows(path, text, DELIMITERS[path.suffix.lower()])
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            opened = line.strip()
            if opened.startswith("[") or opened == "{":  # a JSON array, or one object over several lines
                fix = "the file must hold one JSON object per line (JSONL), not one JSON array or document"
            elif "\t" in opened and not opened.startswith("{"):  # tab-separated text under another name
                fix = ("each line must be one JSON object; for tab-separated values with a header row "
                       "(prompt<TAB>response), name the file .tsv")
            elif "," in opened and not opened.startswith("{"):  # a spreadsheet's export under a .jsonl name
                fix = ("each line must be one JSON object; for comma-separated values with a header row "
                       "(prompt,response), name the file .csv")
            else:  # a newcomer's trailing comma was told the file was an array
                fix = "fix that line: each line is one complete JSON object (a stray comma, quote or brace?)"
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}); {fix}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        rows.append((where, row))
    return rows


def _table_rows(path: Path, text: str, delimiter: str) -> list[tuple[str, dict]]:
    """(file:line, {column: cell}) of every non-blank row of a CSV/TSV file under its header row."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, rows, start = None, [], 1
    try:
        for record in reader:
            where, start = f"{path}:{start}", reader.line_num + 1  # a quoted cell may span lines
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() for cell in record]
                continue
            if len(record) > len(header):
                mark = "comma" if delimiter == "," else "tab"
                raise DataError(f"{where}: {len(record)} cells but the header row has {len(header)} "
                                f"({', '.join(header)}); put a cell that holds a {mark} in double quotes")
            rows.append((where, dict(itertools.zip_longest(header, record, fillvalue=""))))  # short row: empty cells
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {path.suffix[1:].upper()} ({exc}); fix that row "
                        f"(a double quote not closed, or one inside a quoted cell not doubled?)") from None
    if header is not None and not rows:
        sep = "," if delimiter == "," else "<tab>"
        raise DataError(f"{path} has one row ({', '.join(header)}), read as its header: the first row names the "
                        f"columns (e.g. prompt{sep}response), the examples go below it, one per row")
    return rows


def load_data(source: str | Path, fmt: str = AUTO, prompt_column: str = "", response_column: str = "",
              history_column: str | None = None) -> LoadedData:
    """The examples of a JSONL file and the columns they came from; any problem raises DataError naming file:line."""
    path = resolve_data_path(source)
    rows = _read_rows(path)
    if not rows:
        shape = FORMATS.get(fmt, FORMATS["chat"])
        lines = "rows under a header row" if path.suffix.lower() in DELIMITERS else "JSON lines"
        raise DataError(f"{path} holds no examples; add {lines} with {prompt_column or shape.prompt!r} and "
                        f"{response_column or shape.response!r}")
    detected = fmt == AUTO and not (prompt_column or response_column)  # read from the first row's columns
    try:
        # A spreadsheet's columns are named by its header row, not by the first row under it.
        named_at = f"{path}, header row" if path.suffix.lower() in DELIMITERS else rows[0][0]
        cols = resolve_columns(rows[0][1], named_at, fmt, prompt_column, response_column, history_column)
    except DataError as exc:
        if not (detected and path.suffix.lower() in DELIMITERS):
            raise
        sep = "," if path.suffix.lower() == ".csv" else "<tab>"
        raise DataError(f"{exc} (the first row of a {path.suffix} file is its header: e.g. prompt{sep}response)"
                        ) from None
    examples = []
    for where, row in rows:
        missing = [c for c in (cols.prompt, cols.response) if c not in row]
        if missing and where != rows[0][0]:  # the columns fit the first line: this line lacks a value
            raise DataError(f"{where}: no {missing[0]!r} on this line (the lines use {cols.prompt!r} and "
                            f"{cols.response!r}); every line needs both: fill it in or drop the line")
        if missing:
            raise DataError(f"{where}: missing column {missing[0]!r}; columns found: {', '.join(sorted(row))} "
                            f"(set prompt_column/response_column or --format)")
        prompt, response = row[cols.prompt], row[cols.response]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{where}: {cols.prompt!r} and {cols.response!r} must be strings")
        if not response.strip():
            wide = path.suffix.lower() == ".csv" and "，" in prompt
            raise DataError(f"{where}: the answer ({cols.response!r}) is empty; every line needs one to learn "
                            "from: fill it in or drop the line"
                            + (f" (the question cell is {prompt!r}: cells are split at an ASCII comma ',', not "
                               "at '，')" if wide else ""))
        examples.append(Example(prompt, response, _history(row.get(cols.history), where) if cols.history else ()))
    return LoadedData(path, cols, examples)


def load_examples(source: str | Path, fmt: str = AUTO, prompt_column: str = "", response_column: str = "",
                  history_column: str | None = None) -> list[Example]:
    """Examples of a JSONL file (see load_data)."""
    return load_data(source, fmt, prompt_column, response_column, history_column).examples


def encode_example(tok: ChatGLMTokenizer, ex: Example, max_source_length: int, max_target_length: int) -> Encoded:
    """Official layout: a = prompt ids (with [gMASK] sop), b = answer ids; a + b + eos, labels -100 on a.

    A too-long multi-turn prompt first loses its oldest rounds (so the current question survives),
    then is cut at max_source_length as the official code does (ChatGLM3/GLM-4: the question is cut,
    the closing <|assistant|> kept).
    """
    history = list(ex.history)
    a = tok.build_chat_input(ex.prompt, history)  # the base family's chat prompt (ChatGLM2: encode(build_prompt))
    prompt_truncated = len(a) > max_source_length
    while len(a) > max_source_length and history:
        history.pop(0)
        a = tok.build_chat_input(ex.prompt, history)
    if tok.family.chat_format == "roles" and len(a) > max_source_length:
        a = a[:max_source_length - 1] + a[-1:]  # keep <|assistant|>: the answer follows it when served too
    a = a[:max_source_length]
    b_full = tok.answer_ids(ex.response)  # ChatGLM3/GLM-4: the "\n" the model writes first, then the answer
    b = b_full[:max_target_length]
    end = tok.answer_end_id  # eos (GLM-4: <|user|>, as its finetune demo ends answers)
    return Encoded(a + b + [end], [-100] * len(a) + b + [end],
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
