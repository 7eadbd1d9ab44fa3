"""The GLM family as a table: one `GlmFamily` per base (ChatGLM2, ChatGLM3, GLM-4), chosen once at load.

Everything that differs between the bases lives here as data (see GLM_FAMILY.md); modeling.py stays
one model and reads only `rope_ratio` and the family's rotary variant. Facts, confirmed against the
official files (public mirrors):

- ChatGLM3 rotary (THUDM/chatglm3-6b modeling_chatglm.py, RotaryEmbedding.forward_impl): theta and
  positions in float32, `base = base * rope_ratio`; ChatGLM2 (THUDM/chatglm2-6b and -32k): theta and
  positions in the dtype of `inv_freq`, positions divided by `rope_ratio` (32k only).
- ChatGLM3 tokenizer (THUDM/chatglm3-6b tokenization_chatglm.py, SPTokenizer): nine specials after the
  SentencePiece pieces: [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>.
- GLM-4 tokenizer (THUDM/glm-4-9b-chat tokenization_chatglm.py, ChatGLM4Tokenizer): tiktoken over the
  base64 ranks of tokenizer.model; specials from len(ranks): <|endoftext|> [MASK] [gMASK] [sMASK] <sop>
  <eop> <|system|> <|user|> <|assistant|> <|observation|> <|begin_of_image|> <|end_of_image|>
  <|begin_of_video|> <|end_of_video|>.
- Stop ids: ChatGLM3 openai_api_demo/utils.py stops on eos, <|user|>, <|observation|>; the GLM-4
  basic_demo server on [151329, 151336, 151338] (<|endoftext|>, <|user|>, <|observation|>).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmbot.errors import ModelLoadError

CHATGLM2_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_SPECIALS = CHATGLM2_SPECIALS + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
GLM4_SPECIALS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>")


@dataclass(frozen=True)
class GlmFamily:
    """What one GLM base family needs beyond the shared architecture."""

    name: str  # "chatglm2" | "chatglm3" | "glm4": recorded with every adapter
    display: str  # for messages and /v1/models
    tokenizer: str  # "sentencepiece" (tokenizer.model is a SentencePiece proto) | "tiktoken" (base64 ranks)
    specials: tuple[str, ...]  # special tokens, in id order after the regular vocabulary
    prompt_start: tuple[str, str]  # the two specials every prompt starts with
    rotary: str  # "interpolate": table in model dtype, positions / rope_ratio | "scaled_base": fp32, base * rope_ratio
    chat_format: str  # "rounds" ([Round N] 问/答) | "roles" (<|role|>{metadata}\n{content})
    native_system: bool  # a <|system|> turn exists
    native_tools: bool  # the model was trained to call tools
    stop_tokens: tuple[str, ...]  # generation stops at eos and these specials
    config_defaults: Mapping[str, Any] = field(default_factory=dict)  # official config values that differ

    @property
    def role_tokens(self) -> tuple[str, ...]:
        return tuple(t for t in self.specials if t in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"))


CHATGLM2 = GlmFamily(
    name="chatglm2", display="ChatGLM2", tokenizer="sentencepiece", specials=CHATGLM2_SPECIALS,
    prompt_start=("[gMASK]", "sop"), rotary="interpolate", chat_format="rounds", native_system=False,
    native_tools=False, stop_tokens=(), config_defaults={"seq_length": 32768, "torch_dtype": "float16"})
CHATGLM3 = GlmFamily(
    name="chatglm3", display="ChatGLM3", tokenizer="sentencepiece", specials=CHATGLM3_SPECIALS,
    prompt_start=("[gMASK]", "sop"), rotary="scaled_base", chat_format="roles", native_system=True,
    native_tools=True, stop_tokens=("<|user|>", "<|observation|>"),
    config_defaults={"seq_length": 8192, "torch_dtype": "float16"})
GLM4 = GlmFamily(
    name="glm4", display="GLM-4", tokenizer="tiktoken", specials=GLM4_SPECIALS, prompt_start=("[gMASK]", "<sop>"),
    rotary="scaled_base", chat_format="roles", native_system=True, native_tools=True,
    stop_tokens=("<|user|>", "<|observation|>"),
    config_defaults={"num_layers": 40, "padded_vocab_size": 151552, "layernorm_epsilon": 1.5625e-07,
                     "rope_ratio": 500, "seq_length": 131072, "torch_dtype": "bfloat16",
                     "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329})

FAMILIES: dict[str, GlmFamily] = {f.name: f for f in (CHATGLM2, CHATGLM3, GLM4)}

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?\n?$")
_NAME_HINTS = (("glm-4", GLM4), ("glm4", GLM4), ("chatglm3", CHATGLM3), ("chatglm2", CHATGLM2))


def family_named(name: str) -> GlmFamily:
    """The family called `name` ('chatglm2', 'chatglm3', 'glm4')."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelLoadError(f"unknown GLM family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of(config: Any) -> GlmFamily:
    """The family recorded on a loaded config (`glm_family`; ChatGLM2 when absent)."""
    return family_named(getattr(config, "glm_family", None) or CHATGLM2.name)


def tokenizer_kind(file: Path) -> str:
    """'tiktoken' when `file` holds base64 ranks (one 'token rank' line each), else 'sentencepiece'."""
    with open(file, "rb") as f:
        first = f.readline(4096)
    return "tiktoken" if _TIKTOKEN_LINE.match(first) else "sentencepiece"


def _name_hint(texts: list[str]) -> GlmFamily | None:
    for text in texts:
        low = text.lower()
        for hint, family in _NAME_HINTS:
            if hint in low:
                return family
    return None


def detect_family(folder: Path, config_data: Mapping[str, Any], name: str = "") -> GlmFamily:
    """The family of the base in `folder`, from its files (decided once, at load).

    Order: an explicit `glm_family` in config.json; the tokenizer file (base64 ranks: GLM-4); the
    tokenizer config naming the ChatGLM3 role tokens; the names config.json carries (`_name_or_path`,
    `auto_map`, `architectures`); then the last part of `name` (the folder or Hub id); else ChatGLM2.
    A config.json naming one family over another family's tokenizer file is refused.
    """
    if config_data.get("glm_family"):
        return family_named(str(config_data["glm_family"]))
    tok_file = folder / "tokenizer.model"
    kind = tokenizer_kind(tok_file) if tok_file.is_file() else None
    hint = _name_hint([str(config_data.get("_name_or_path", "")), json.dumps(config_data.get("auto_map") or {}),
                       json.dumps(config_data.get("architectures") or [])])
    if kind == "tiktoken":
        if hint is not None and hint.tokenizer != "tiktoken":
            raise ModelLoadError(f"{folder}/config.json names {hint.display} but its tokenizer.model holds tiktoken "
                                 "ranks (GLM-4); download the matching tokenizer.model or fix config.json")
        return GLM4
    if hint is GLM4 and kind == "sentencepiece":
        raise ModelLoadError(f"{folder}/config.json names GLM-4 but its tokenizer.model is SentencePiece; "
                             "GLM-4 needs its tiktoken tokenizer.model")
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file() and "<|user|>" in tok_config.read_text(encoding="utf-8", errors="replace"):
        return CHATGLM3
    if hint is None:
        by_name = _name_hint([Path(name).name]) if name else None
        hint = by_name if by_name is not None and by_name.tokenizer == "sentencepiece" else None
    return hint or CHATGLM2


__all__ = ["CHATGLM2", "CHATGLM3", "FAMILIES", "GLM4", "GlmFamily", "detect_family", "family_named", "family_of",
           "tokenizer_kind"]
