"""The shipped builtin base: loads offline, chats, covers GB2312, and the default recipe teaches it a new domain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glmbot import load_base
from glmbot.config import TrainSettings
from glmbot.model.generate import generate_answers
from glmbot.training.coverage import gb2312_hanzi
from glmbot.training.data import encode_all, load_examples
from glmbot.training.rewrites import augmented_rows
from glmbot.training.trainer import PrefixTrainer, read_losses

DATA = Path(__file__).parent / "data"


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


def test_tokenizer_spells_every_gb2312_hanzi_and_fullwidth_mark_as_one_piece(base):
    _, tok = base
    hanzi = gb2312_hanzi()
    assert len(hanzi) == 6763
    marks = list("，。、；：？！“”‘’（）《》【】—…")
    missing = [c for c in hanzi + marks + list("azAZ09") if len(tok.sp.EncodeAsIds(c)) != 1
               or tok.sp.IsByte(tok.sp.EncodeAsIds(c)[0])]
    assert missing == []
    assert tok.sp.IsByte(tok.sp.EncodeAsIds("\n")[0])  # newline stays a byte piece, as in ChatGLM2


def test_default_recipe_learns_a_held_out_domain(base, tmp_path):
    """tests/data/library_faq.jsonl was written by hand, never seen by the base nor by recipe tuning."""
    model, tok = base
    examples = load_examples(DATA / "library_faq.jsonl")
    encoded, _ = encode_all(tok, examples, 64, 128)
    settings = TrainSettings(max_steps=150, checkpoint_every=0)  # the default recipe, a quarter of its steps
    questions = [e.prompt for e in examples]
    before = generate_answers(model, tok, questions)
    steps = []
    result = PrefixTrainer(model, settings, tmp_path, on_step=steps.append).fit(encoded)
    after = generate_answers(model, tok, questions, result.encoder.kv().detach())
    # The progress display's time left: none while the first steps (start-up) are all it has, then the
    # median of the latest steps, which the run's own pace bears out.
    assert [i.step for i in steps] == list(range(1, 151)) and steps[0].eta_s is None
    assert steps[-1].eta_s == 0 and 0 < steps[50].eta_s < 100 * (steps[-1].elapsed_s - steps[0].elapsed_s) / 149 * 3
    exact_before = sum(a == e.response for a, e in zip(before, examples))
    exact_after = sum(a == e.response for a, e in zip(after, examples))
    assert exact_before == 0 and exact_after >= 9, (exact_before, exact_after, after)
    assert sum(result.losses[-5:]) < sum(result.losses[:5]) / 4
    assert read_losses(tmp_path) == pytest.approx(result.losses, abs=1e-6)
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_history_rows_let_a_question_come_back_as_a_conversations_second_turn(base, tmp_path):
    """Asked behind another question and its answer (as `glmbot chat` sends a second turn), half
    the held-out domain's answers come back exactly after a third of the default steps once the
    recipe trains rows behind an earlier round (without them: 1 of 12 after all 600 steps)."""
    model, tok = base
    examples = load_examples(DATA / "library_faq.jsonl")
    settings = TrainSettings(max_steps=200, checkpoint_every=0, question_rewrites=0, history_share=1.0)
    encoded = encode_all(tok, examples, settings.max_source_length, settings.max_target_length)[0]
    reworded, behind = augmented_rows(tok, examples, settings)
    assert not reworded and len(behind) == len(examples)
    kv = PrefixTrainer(model, settings, tmp_path).fit(encoded + behind).encoder.kv().detach()
    earlier = [examples[(i + 5) % len(examples)] for i in range(len(examples))]  # not the rounds trained
    answers = generate_answers(model, tok, [e.prompt for e in examples], kv,
                               histories=[((o.prompt, o.response),) for o in earlier])
    exact = sum(a == e.response for a, e in zip(answers, examples))
    assert exact >= 6, (exact, answers)  # 7 of 12 measured after these 200 steps
