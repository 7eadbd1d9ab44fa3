"""Which characters of a data set the base's tokenizer does not cover, before any training step.

A character missing from the SentencePiece vocabulary is spelled with byte pieces (`<0xE4>` ...)
or, without byte fallback, as unk. The base never trained those embeddings in context, so a
prefix cannot teach them: a domain whose answers are full of them stays unlearnable on that base.
Whitespace is left out: ChatGLM2 itself writes newlines as `<0x0A>` and its bases learn them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from glmbot.model.tokenizer import ChatGLMTokenizer
from glmbot.training.data import Encoded, Example

# Above this share of answer tokens spelled as bytes (or unk), the base cannot learn the domain.
COVERAGE_WARN_SHARE = 0.02
SHOWN_CHARS = 10  # uncovered characters listed in a report
WHITESPACE_BYTES = frozenset(b" \t\n\r")


@dataclass(frozen=True)
class CoverageReport:
    """How much of the data the tokenizer spells with byte pieces instead of its own vocabulary."""

    uncovered_chars: int      # distinct characters spelled with byte pieces or unk
    first_uncovered: str      # the first SHOWN_CHARS of them, in order of first appearance
    answer_tokens: int        # answer tokens (eos excluded) after truncation
    byte_answer_tokens: int   # of those, byte pieces or unk

    @property
    def byte_share(self) -> float:
        """Share of answer tokens that fall back to bytes, 0..1."""
        return self.byte_answer_tokens / self.answer_tokens if self.answer_tokens else 0.0

    @property
    def too_low(self) -> bool:
        """More than COVERAGE_WARN_SHARE of the answers is spelled in bytes: the base cannot learn them."""
        return self.byte_share > COVERAGE_WARN_SHARE


def gb2312_hanzi() -> list[str]:
    """The 6,763 hanzi of GB2312 (level 1: rows 0xB0-0xD7, level 2: 0xD8-0xF7), in code order: what the
    builtin base's tokenizer must hold as pieces of their own (scripts/build_tiny_base.py)."""
    chars = []
    for hi in range(0xB0, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes((hi, lo)).decode("gb2312"))
            except UnicodeDecodeError:
                pass  # the unassigned tail of row 0xD7
    return chars


def fallback_ids(tok: ChatGLMTokenizer) -> frozenset[int]:
    """Ids of byte pieces (whitespace bytes excepted) and of unk: what an uncovered character becomes.
    Tokenizers without SentencePiece (GLM-4's byte-level BPE) name theirs (`fallback_ids()`)."""
    if not hasattr(tok, "sp"):
        return tok.fallback_ids()
    ids = {tok.sp.unk_id()}
    for value in range(256):
        piece_id = tok.sp.PieceToId(f"<0x{value:02X}>")
        if value not in WHITESPACE_BYTES and tok.sp.IsByte(piece_id):
            ids.add(piece_id)
    return frozenset(ids)


def tokenizer_coverage(tok: ChatGLMTokenizer, examples: Sequence[Example],
                       encoded: Sequence[Encoded]) -> CoverageReport:
    """Uncovered characters of every prompt, answer and history turn; byte share of the encoded answers."""
    fallback = fallback_ids(tok)
    seen: dict[str, bool] = {}  # char -> uncovered, in order of first appearance
    for ex in examples:
        for text in (ex.prompt, ex.response, *(t for turn in ex.history for t in turn)):
            for char in text:
                if char not in seen:
                    seen[char] = not char.isspace() and any(i in fallback for i in tok.encode(char, add_special_tokens=False))
    uncovered = [c for c, bad in seen.items() if bad]
    answers = [label for e in encoded for label in e.labels[:-1] if label != -100]  # [:-1]: eos
    return CoverageReport(uncovered_chars=len(uncovered), first_uncovered="".join(uncovered[:SHOWN_CHARS]),
                          answer_tokens=len(answers), byte_answer_tokens=sum(1 for i in answers if i in fallback))
