"""ChatGLM2 and ChatGLM3 tokenizers over SentencePiece, with the official special-token scheme.

Special tokens follow the SentencePiece pieces in a fixed order, so their ids are always
`sp_size + k`: ChatGLM2 [MASK], [gMASK], [sMASK], sop, eop (64789..64793 for the official model);
ChatGLM3 adds <|system|> <|user|> <|assistant|> <|observation|> (64794..64797; THUDM/chatglm3-6b
tokenization_chatglm.py, SPTokenizer). Text never encodes to a special id (no prompt injection of
role tokens). Prompts start with `[gMASK] sop`; batches are padded on the LEFT with pad = unk = 0;
eos is `</s>` = 2. Written without transformers' tokenizer classes, whose internals broke the official one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import sentencepiece as spm
import torch

from glmbot.errors import TokenizerError
from glmbot.fileio import atomic_copy, atomic_write_text
from glmbot.model.family import CHATGLM2, CHATGLM3, GlmFamily

SPECIAL_TOKENS = CHATGLM2.specials
TOKENIZER_FILE = "tokenizer.model"

History = Sequence[tuple[str, str]]


def build_prompt(query: str, history: History | None = None) -> str:
    """The official multi-turn prompt: numbered rounds of 问/答 with full-width colons."""
    parts = []
    for i, (old_query, response) in enumerate(history or [], start=1):
        parts.append(f"[Round {i}]\n\n问：{old_query}\n\n答：{response}\n\n")
    parts.append(f"[Round {len(history or []) + 1}]\n\n问：{query}\n\n答：")
    return "".join(parts)


class GlmTokenizerBase:
    """What every GLM tokenizer shares: special ids by the family's names, left padding, and the
    tokenizer folder (tokenizer.model + tokenizer_config.json). Subclasses set `family`,
    `model_file`, `special_ids`, `eos_token_id`, `pad_token_id` and `encode`."""

    family: GlmFamily
    model_file: Path
    special_ids: dict[str, int]
    eos_token_id: int
    pad_token_id: int
    # names of [gMASK], sop and eop in the family's special list (GLM-4 writes <sop>, <eop>)
    SOP, EOP = "sop", "eop"

    @property
    def gmask_id(self) -> int:
        return self.special_ids["[gMASK]"]

    @property
    def sop_id(self) -> int:
        return self.special_ids[self.SOP]

    @property
    def eop_id(self) -> int:
        return self.special_ids[self.EOP]

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.model and a small tokenizer_config.json into `folder` (atomically each)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / TOKENIZER_FILE
        if target.resolve() != self.model_file.resolve():
            atomic_copy(self.model_file, target)
        config = {"tokenizer_class": type(self).__name__, "glm_family": self.family.name, "padding_side": "left",
                  "special_tokens": dict(self.special_ids), "eos_token_id": self.eos_token_id,
                  "pad_token_id": self.pad_token_id}
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))

    @classmethod
    def from_pretrained(cls, folder: str | Path):
        return cls(Path(folder) / TOKENIZER_FILE)

    def pad(self, batch: Sequence[Sequence[int]], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Left-pad id lists: input_ids, attention_mask and position_ids (pads at position 0), each (B, T)."""
        if not batch:
            raise TokenizerError("cannot pad an empty batch")
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        position_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            n = len(ids)
            if n:
                input_ids[row, longest - n:] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, longest - n:] = 1
                position_ids[row, longest - n:] = torch.arange(n)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True,
                 device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Encode one text or a batch into left-padded tensors."""
        if isinstance(texts, str):
            texts = [texts]
        return self.pad([self.encode(t, add_special_tokens) for t in texts], device)

    def build_chat_input(self, query: str, history: History | None = None, system: str | None = None) -> list[int]:
        """Ids of the family's chat prompt for `query` after `history` rounds (see glmbot.model.chat_format)."""
        from glmbot.model.chat_format import history_messages, prompt_ids

        return prompt_ids(self.family, self, history_messages(query, history, system))

    def answer_ids(self, text: str) -> list[int]:
        """Ids of an answer as the model writes it after the prompt (training targets)."""
        from glmbot.model.chat_format import answer_ids

        return answer_ids(self.family, self, text)

    @property
    def answer_end_id(self) -> int:
        """The id a training answer ends with (eos; GLM-4: <|user|>, as its finetune demo does)."""
        from glmbot.model.chat_format import answer_end_id

        return answer_end_id(self.family, self)


class ChatGLMTokenizer(GlmTokenizerBase):
    """Encode/decode text for ChatGLM2 models; `__call__` pads batches on the left."""

    family: GlmFamily = CHATGLM2

    def __init__(self, model_file: str | Path):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise TokenizerError(f"tokenizer file {model_file} does not exist; the model folder needs {TOKENIZER_FILE}")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{model_file} is not a SentencePiece model: {exc}") from None
        self.sp_size = self.sp.GetPieceSize()
        self.special_ids = {tok: self.sp_size + k for k, tok in enumerate(self.family.specials)}
        self.eos_token_id = self.sp.eos_id()  # </s> = 2
        self.pad_token_id = self.sp.unk_id()  # pad = unk = 0
        self.padding_side = "left"

    @property
    def vocab_size(self) -> int:
        return self.sp_size + len(self.family.specials)

    def tokenize(self, text: str) -> list[str]:
        return self.sp.EncodeAsPieces(text)

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Token ids of `text`, with `[gMASK] sop` in front when add_special_tokens.

        max_length truncates from the right and counts the two special tokens, as the official
        preprocessing does for max_source_length.
        """
        ids = list(self.sp.EncodeAsIds(text))
        if add_special_tokens:
            ids = [self.gmask_id, self.sop_id] + ids
        return ids[:max_length] if max_length is not None else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens (and pad) are dropped, or written by name when kept."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i >= self.sp_size or (skip_special_tokens and i in (self.pad_token_id, self.eos_token_id)):
                if not skip_special_tokens and i >= self.sp_size:
                    pieces.append(self.sp.DecodeIds(run))
                    pieces.append(self.family.specials[i - self.sp_size] if i < self.vocab_size else f"<{i}>")
                    run = []
                continue
            run.append(i)
        pieces.append(self.sp.DecodeIds(run))
        return "".join(pieces)

    def build_prompt(self, query: str, history: History | None = None) -> str:
        return build_prompt(query, history)


class ChatGLM3Tokenizer(ChatGLMTokenizer):
    """ChatGLM3: the ChatGLM2 scheme plus the four role tokens (64794..64797 officially)."""

    family = CHATGLM3
