"""Tokenizer: special ids, the official prompt format, left padding, decode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glmbot.errors import TokenizerError
from glmbot.model.tokenizer import SPECIAL_TOKENS, ChatGLMTokenizer, build_prompt

# The official ChatGLM2-6B tokenizer.model cannot be downloaded here; point this at one to run
# the official test vector (CHATGLM2_SPEC.md).
OFFICIAL_TOKENIZER = os.environ.get("GLMBOT_OFFICIAL_TOKENIZER", "")


@pytest.fixture
def tok(sp_model_file) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(sp_model_file)


def test_special_ids_follow_the_sentencepiece_pieces(tok):
    n = tok.sp_size
    assert tok.special_ids == {t: n + k for k, t in enumerate(SPECIAL_TOKENS)}
    assert (tok.gmask_id, tok.sop_id, tok.eop_id) == (n + 1, n + 3, n + 4)
    assert (tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (2, 0, n + 5)


def test_encode_prepends_gmask_sop_and_no_eos(tok):
    ids = tok.encode("你好")
    assert ids[:2] == [tok.gmask_id, tok.sop_id] and ids[-1] != tok.eos_token_id
    assert tok.encode("你好", add_special_tokens=False) == ids[2:]
    assert tok.decode(ids) == "你好"
    assert tok.decode(ids, skip_special_tokens=False) == "[gMASK]sop你好"


def test_newline_and_fullwidth_punctuation_survive(tok):
    text = "[Round 1]\n\n问：你好？\n\n答："
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("history,expected", [
    ([], "[Round 1]\n\n问：在吗\n\n答："),
    ([("你好", "你好！")], "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：在吗\n\n答："),
    ([("你好", "你好！"), ("谢谢", "不客气")],
     "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：谢谢\n\n答：不客气\n\n[Round 3]\n\n问：在吗\n\n答："),
])
def test_prompt_format_for_0_1_2_rounds(tok, history, expected):
    assert build_prompt("在吗", history) == expected
    assert tok.build_chat_input("在吗", history) == tok.encode(expected)


def test_left_padding_with_positions(tok):
    batch = tok(["你好", "请问订单什么时候发货？"])
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    short = len(tok.encode("你好"))
    assert ids.shape[1] == len(tok.encode("请问订单什么时候发货？"))
    pad = ids.shape[1] - short
    assert ids[0, :pad].tolist() == [0] * pad and mask[0, :pad].sum() == 0
    assert ids[0, pad:].tolist() == tok.encode("你好")
    assert pos[0, pad:].tolist() == list(range(short)) and pos[0, :pad].sum() == 0
    assert mask[1].all()


def test_decode_drops_pad_and_eos(tok):
    ids = [0, 0] + tok.encode("谢谢", add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(ids) == "谢谢"


def test_save_and_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = ChatGLMTokenizer.from_pretrained(tmp_path)
    assert again.encode("退货需要几天到账？") == tok.encode("退货需要几天到账？")
    assert (tmp_path / "tokenizer_config.json").is_file()


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        ChatGLMTokenizer(tmp_path / "tokenizer.model")
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        ChatGLMTokenizer(bad)


@pytest.mark.skipif(not Path(OFFICIAL_TOKENIZER).is_file(), reason="set GLMBOT_OFFICIAL_TOKENIZER to the official tokenizer.model")
def test_official_test_vector():
    tok = ChatGLMTokenizer(OFFICIAL_TOKENIZER)
    assert tok.sp_size == 64789 and tok.gmask_id == 64790 and tok.sop_id == 64792
    assert tok.encode("[Round 1]\n\n问：你好\n\n答：") == [
        64790, 64792, 790, 30951, 517, 30910, 30939, 30996, 13, 13, 54761, 31211, 39701, 13, 13, 55437, 31211]
