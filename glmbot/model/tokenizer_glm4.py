"""GLM-4 tokenizer: tiktoken BPE over the base64 ranks in tokenizer.model.

Facts from the official THUDM/glm-4-9b-chat tokenization_chatglm.py (ChatGLM4Tokenizer): each line of
tokenizer.model is `<base64 token> <rank>`; the pre-tokenizer pattern is the cl100k one below; the
special tokens follow the ranks in a fixed order starting at len(ranks) (<|endoftext|> = 151329 for the
official file, so [gMASK] 151331, <sop> 151333, <|user|> 151336, <|assistant|> 151337, <|observation|>
151338); prompts start with `[gMASK] <sop>`; text is encoded with `disallowed_special=()`, so special
names in text stay text (no role-token injection). eos = pad = <|endoftext|>; padding on the left.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import torch

from glmbot.errors import TokenizerError
from glmbot.model.family import GLM4, GlmFamily
from glmbot.model.tokenizer import TOKENIZER_FILE, GlmTokenizerBase

PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")


def read_ranks(file: Path) -> dict[bytes, int]:
    """The mergeable ranks of a tiktoken rank file (`<base64> <rank>` per line)."""
    ranks: dict[bytes, int] = {}
    try:
        with open(file, encoding="ascii") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{file}:{number}: not a tiktoken rank line ({exc}); GLM-4 needs its own "
                             "tokenizer.model") from None
    return ranks


class GLM4Tokenizer(GlmTokenizerBase):
    """Encode/decode text for GLM-4 models; same interface as ChatGLMTokenizer."""

    family: GlmFamily = GLM4
    SOP, EOP = "<sop>", "<eop>"

    def __init__(self, model_file: str | Path):
        import tiktoken

        model_file = Path(model_file)
        if not model_file.is_file():
            raise TokenizerError(f"tokenizer file {model_file} does not exist; the model folder needs {TOKENIZER_FILE}")
        self.model_file = model_file
        ranks = read_ranks(model_file)
        self.n_ranks = len(ranks)
        self.special_ids = {tok: self.n_ranks + k for k, tok in enumerate(self.family.specials)}
        self._special_names = {i: tok for tok, i in self.special_ids.items()}
        self.enc = tiktoken.Encoding(name=f"glm4:{model_file}", pat_str=PAT_STR, mergeable_ranks=ranks,
                                     special_tokens=self.special_ids)
        self.eos_token_id = self.special_ids["<|endoftext|>"]
        self.pad_token_id = self.eos_token_id
        self.padding_side = "left"

    @property
    def vocab_size(self) -> int:
        return self.n_ranks + len(self.special_ids)

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Token ids of `text` (special names stay text), with `[gMASK] <sop>` in front when add_special_tokens."""
        ids = self.enc.encode(text, disallowed_special=())
        if add_special_tokens:
            ids = [self.gmask_id, self.sop_id] + ids
        return ids[:max_length] if max_length is not None else ids

    def tokenize(self, text: str) -> list[bytes]:
        return [self.enc.decode_single_token_bytes(i) for i in self.encode(text, add_special_tokens=False)]

    def fallback_ids(self) -> frozenset[int]:
        """Ids of the single non-ASCII bytes: what a character missing from the ranks falls back to."""
        return frozenset(self.enc.encode_single_token(bytes([b])) for b in range(0x80, 0x100))

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens are dropped, or written by name when kept."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i >= self.n_ranks:
                if not skip_special_tokens:
                    parts.append(self.enc.decode(run, errors="replace"))
                    parts.append(self._special_names.get(i, f"<{i}>"))
                    run = []
                continue
            run.append(i)
        parts.append(self.enc.decode(run, errors="replace"))
        return "".join(parts)
