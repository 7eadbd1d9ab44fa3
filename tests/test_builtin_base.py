"""The shipped tiny base: loads offline, chats, and a short prefix training teaches it a shop's facts."""

from __future__ import annotations

import pytest
import torch

from glmbot import load_base
from glmbot.config import TrainSettings
from glmbot.model.generate import generate_answers
from glmbot.training.data import encode_all, load_examples
from glmbot.training.trainer import PrefixTrainer, read_losses


@pytest.fixture(scope="module")
def base():
    return load_base("builtin:tiny", device="cpu")


def test_builtin_base_has_the_chatglm2_layout(base):
    model, tok = base
    cfg = model.config
    assert cfg.multi_query_group_num == 2 and cfg.kv_channels * cfg.num_attention_heads == cfg.hidden_size
    assert tok.special_ids["[gMASK]"] == tok.sp_size + 1 and tok.vocab_size <= cfg.padded_vocab_size
    assert model.dtype == torch.float32


def test_plain_base_greets_like_a_chat_model(base):
    model, tok = base
    hello, who, thanks = generate_answers(model, tok, ["你好", "你是谁", "谢谢"])
    assert "您好" in hello or "你好" in hello
    assert "助手" in who
    assert "不客气" in thanks


def test_short_prefix_training_brings_back_trained_facts(base, tmp_path):
    model, tok = base
    examples = [e for e in load_examples("builtin:support") if not e.history][::6][:24]
    encoded, _ = encode_all(tok, examples, 64, 128)
    settings = TrainSettings(pre_seq_len=16, prefix_projection=True, learning_rate=6e-3, max_steps=100,
                             batch_size=8, checkpoint_every=0)
    questions = [e.prompt for e in examples]
    before = generate_answers(model, tok, questions)
    result = PrefixTrainer(model, settings, tmp_path).fit(encoded)
    after = generate_answers(model, tok, questions, result.encoder.kv().detach())
    exact_before = sum(a == e.response for a, e in zip(before, examples))
    exact_after = sum(a == e.response for a, e in zip(after, examples))
    assert exact_after >= 0.75 * len(examples) and exact_after > exact_before + 5
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    assert read_losses(tmp_path) == pytest.approx(result.losses, abs=1e-6)
    assert (tmp_path / "loss.png").stat().st_size > 1000
