"""Tokenizer files and model folders of the GLM family, written by the tests (no downloads).

The official ChatGLM3 tokenizer.model (SentencePiece, 64789 pieces) and the GLM-4 one (151329 tiktoken
ranks) cannot be fetched here. These builders write files with the same size and scheme and the pieces
the issue's test vectors need at their OFFICIAL ids, so the vectors check the special-token layout,
the prompt assembly and the encoding rules honestly. What they do NOT pin: the official merges and
scores of any other text (every other piece here is an unused filler; other text falls back to bytes).

- ChatGLM3 / ChatGLM2 (same SentencePiece scheme; ids from the official vectors: ChatGLM2
  "[Round 1]\\n\\n问：你好..." in CHATGLM2_SPEC.md and ChatGLM3 "你好"): <unk> 0, <s> 1, </s> 2, byte
  pieces <0x00>.. from 3 (so "\\n" = <0x0A> = 13), "▁" 30910, "▁你" 36474, "好" 54591; normaliser identity
  with the dummy prefix on (encode("\\n") = [30910, 13], "▁" then the byte), BPE.
- GLM-4: single bytes at the GPT-2 byte order ranks ("\\n" = 198), the UTF-8 merges of 你 and 好 at
  filler ranks, "你好" at 109377; fillers contain 0xFF so text can never reach them.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

CHATGLM_PIECES = 64789
GLM4_RANKS = 151329
CHATGLM3_KNOWN = {"▁": 30910, "▁你": 36474, "好": 54591, "你": 40000}  # 你 alone: not an official id
GLM4_KNOWN = {"你好".encode(): 109377}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are 10-byte varints
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: bytes | float) -> bytes:
    """One protobuf field: varint (int), length-delimited (bytes) or fixed32 (float)."""
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(value)


# sentencepiece_model.proto: SentencePiece {piece=1, score=2, type=3}; type NORMAL=1 UNKNOWN=2
# CONTROL=3 UNUSED=5 BYTE=6; TrainerSpec {model_type=3 (BPE=2), vocab_size=4, byte_fallback=35,
# unk_id=40, bos_id=41, eos_id=42, pad_id=43}; NormalizerSpec {name=1, add_dummy_prefix=3,
# remove_extra_whitespaces=4, escape_whitespaces=5}; ModelProto {pieces=1, trainer_spec=2, normalizer_spec=3}.
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6


def _piece(text: str, kind: int, score: float = 0.0) -> bytes:
    return _field(1, _field(1, text.encode()) + _field(2, score) + _field(3, kind))


def write_chatglm_sp_model(path: Path, known: dict[str, int] = CHATGLM3_KNOWN) -> Path:
    """A SentencePiece BPE model with CHATGLM_PIECES pieces, `known` at their ids, unused fillers elsewhere
    (protobuf written by hand: the python protobuf runtime is not a dependency)."""
    by_id = {i: p for p, i in known.items()}
    pieces = []
    for i in range(CHATGLM_PIECES):
        if i == 0:
            pieces.append(_piece("<unk>", UNKNOWN))
        elif i in (1, 2):
            pieces.append(_piece(("<s>", "</s>")[i - 1], CONTROL))
        elif 3 <= i < 259:
            pieces.append(_piece(f"<0x{i - 3:02X}>", BYTE))
        elif i in by_id:
            pieces.append(_piece(by_id[i], NORMAL, -float(i) / CHATGLM_PIECES))
        else:
            pieces.append(_piece(f"<unused{i}>", UNUSED))
    trainer = (_field(3, 2) + _field(4, CHATGLM_PIECES) + _field(35, 1) + _field(40, 0) + _field(41, 1)
               + _field(42, 2) + _field(43, -1))
    normalizer = _field(1, b"identity") + _field(3, 1) + _field(4, 0) + _field(5, 1)
    path.write_bytes(b"".join(pieces) + _field(2, trainer) + _field(3, normalizer))
    return path


def gpt2_byte_order() -> list[int]:
    """Bytes in the order of GPT-2's bytes_to_unicode (printable first): the first 256 BPE ranks."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def write_glm4_ranks(path: Path, known: dict[bytes, int] = GLM4_KNOWN) -> Path:
    """A tiktoken rank file with GLM4_RANKS ranks: bytes, the merges `known` needs, 0xFF fillers."""
    ranks = {bytes([b]): r for r, b in enumerate(gpt2_byte_order())}
    next_rank = 256
    for token in known:
        for char in token.decode():
            raw = char.encode()
            for end in range(2, len(raw) + 1):  # e4 bd, e4 bd a0: each merge step must exist
                if raw[:end] not in ranks:
                    ranks[raw[:end]], next_rank = next_rank, next_rank + 1
    ranks.update(known)
    taken = set(ranks.values())
    filler = (r for r in range(GLM4_RANKS) if r not in taken)
    for r in filler:
        ranks[b"\xff\xfe" + r.to_bytes(3, "big")] = r
    lines = sorted(ranks.items(), key=lambda kv: kv[1])
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in lines), encoding="ascii")
    return path


# Config fields as the official repositories' config.json carry them (values shrunk for tests).
FAMILY_CONFIGS = {
    "chatglm3": {"_name_or_path": "THUDM/chatglm3-6b", "torch_dtype": "float16", "seq_length": 8192},
    "chatglm3-32k": {"_name_or_path": "THUDM/chatglm3-6b-32k", "torch_dtype": "float16", "rope_ratio": 50,
                     "seq_length": 32768},
    "glm4": {"_name_or_path": "THUDM/glm-4-9b-chat", "torch_dtype": "bfloat16", "rope_ratio": 500,
             "seq_length": 131072, "layernorm_epsilon": 1.5625e-07, "eos_token_id": [151329, 151336, 151338],
             "pad_token_id": 151329},
}


def write_family_folder(folder: Path, model, tokenizer_file: Path, variant: str) -> Path:
    """An official-format folder: config.json (with the remote-code fields), tokenizer.model, safetensors."""
    from tests.test_loading import official_config

    folder.mkdir(parents=True, exist_ok=True)
    extra = dict(FAMILY_CONFIGS[variant])
    extra["auto_map"] = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                         "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    config = official_config(model, **extra)
    config.pop("original_rope", None)
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(tokenizer_file, folder / "tokenizer.model")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def random_like(seed: int, **config):
    """A small random model of the shared architecture (tests.conftest.small_model) as a torch module."""
    from tests.conftest import small_model

    torch.manual_seed(seed)
    return small_model(seed, **config)


# -- fixtures (registered for every test module by tests/conftest.py's pytest_plugins) -----------

@pytest.fixture(scope="session")
def chatglm3_sp(tmp_path_factory):
    return write_chatglm_sp_model(tmp_path_factory.mktemp("c3") / "tokenizer.model")


@pytest.fixture(scope="session")
def glm4_ranks(tmp_path_factory):
    return write_glm4_ranks(tmp_path_factory.mktemp("g4") / "tokenizer.model")


@pytest.fixture(scope="session")
def tok3(chatglm3_sp):
    return _tokenizer_classes()[0](chatglm3_sp)


@pytest.fixture(scope="session")
def tok4(glm4_ranks):
    return _tokenizer_classes()[1](glm4_ranks)


def _tokenizer_classes():
    from glmbot.model.tokenizer import ChatGLM3Tokenizer
    from glmbot.model.tokenizer_glm4 import GLM4Tokenizer

    return ChatGLM3Tokenizer, GLM4Tokenizer
