"""Official ChatGLM2 metrics, the predictions-file reader and the forgetting probe."""

from __future__ import annotations

import json
import logging

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from glmbot.errors import DataError
from glmbot.training.metrics import (FORGET_HINT, LEARNED_MIN_GAIN, char_similarity, learned, probe_drift, score,
                                     score_predictions_file)

PAIRS = [
    ("在“我的订单”里点“查看物流”就能看到实时进度。", "在“我的订单”里点“查看物流”就能看到实时进度。"),
    ("商品享受一年质保，质保期内免费维修。", "商品享受一年质保，质保期内非人为损坏免费维修。"),
    ("支持微信和支付宝付款。", "支持微信、支付宝和银行卡付款。"),
    ("鹿语粉色百褶裙，像春天的第一朵樱花。", "鹿语风衣，像月光下的湖水。直筒版型利落大方。"),
    ("退款会在1-3个工作日原路退回。", "满99元包邮，偏远地区加收10元。"),
]


def official_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """THUDM/ChatGLM2-6B ptuning/main.py compute_metrics, written out again (non-empty inputs only)."""
    score_dict: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in pairs:
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))
    return {k: float(np.mean(v)) for k, v in score_dict.items()}


def test_score_matches_the_official_recipe():
    preds, refs = zip(*PAIRS)
    expected = official_metrics(PAIRS)
    assert score(list(preds), list(refs)) == expected
    assert 0 < expected["rouge-2"] < expected["rouge-1"] < 100  # the pairs really differ in quality


def test_identical_strings_score_100_and_disjoint_ones_0():
    text = "我们的客服热线是400-820-1234，服务时间9:00-21:00。"
    assert score([text], [text]) == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    disjoint = score(["今天天气很好"], ["abc xyz"])
    assert all(value < 1.0 for value in disjoint.values()), disjoint


@pytest.mark.parametrize("empty", ["", "   ", "\n\t"])
def test_empty_predictions_score_zero_without_crashing(empty):
    reference = "在“我的订单”里点“查看物流”就能看到实时进度。"
    assert score([empty], [reference]) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    # An empty sample counts as 0 in the mean, it is not skipped.
    assert score([reference, empty], [reference, reference])["rouge-1"] == 50.0


def test_score_rejects_mismatched_or_missing_input():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        score(["a", "b"], ["a"])
    with pytest.raises(DataError, match="no predictions"):
        score([], [])


def test_jieba_stays_quiet_when_it_loads(monkeypatch, caplog):
    from glmbot.segment import jieba_module

    jieba_module.cache_clear()
    monkeypatch.setattr(jieba.dt, "initialized", False)  # force the dictionary load, which logs at DEBUG
    jieba.setLogLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):  # the root handler; jieba's own level decides what is emitted
            score(["你好"], ["你好！"])
    finally:
        jieba.setLogLevel(logging.WARNING)
    assert [r.getMessage() for r in caplog.records if r.name == "jieba"] == []


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_predictions_file_in_the_official_shape(tmp_path):
    lines = [json.dumps({"labels": ref, "predict": pred}, ensure_ascii=False) for pred, ref in PAIRS]
    path = write_lines(tmp_path / "generated_predictions.txt", lines + [""])  # trailing blank line is fine
    metrics_, count = score_predictions_file(path)
    assert count == len(PAIRS)
    assert metrics_ == official_metrics(PAIRS)


@pytest.mark.parametrize("bad_line, message", [
    ('{"labels": "a", "predict": ', "not valid JSON"),
    ('{"labels": "a"}', "missing key 'predict'"),
    ('{"labels": "a", "predict": 3}', "'predict' must be a string"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_bad_prediction_lines_name_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"labels": "你好", "predict": "你好"}, ensure_ascii=False)
    path = write_lines(tmp_path / "generated_predictions.txt", [good, "", bad_line])
    with pytest.raises(DataError, match=message) as info:
        score_predictions_file(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_or_empty_predictions_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        score_predictions_file(tmp_path / "nope.txt")
    empty = write_lines(tmp_path / "empty.txt", [""])
    with pytest.raises(DataError, match="holds no predictions"):
        score_predictions_file(empty)


# ---------------------------------------------------------------------------- forgetting probe

PROBE = [json.loads(line) for line in """\
{"prompt": "你好", "reference": "你好！我是智能助手，有什么可以帮您？"}
{"prompt": "谢谢", "reference": "不客气！还有其他问题随时找我。"}
{"prompt": "3加5等于几？", "reference": "3加5等于8。"}
{"prompt": "中国的首都是哪里？", "reference": "中国的首都是北京。"}""".splitlines()]
REFERENCES = [row["reference"] for row in PROBE]


def test_char_similarity_is_a_character_lcs_f1():
    assert char_similarity("abcd", "abxd") == pytest.approx(0.75)  # LCS "abd": 2*3/(4+4)
    assert char_similarity("a b c", "abc") == 1.0  # whitespace ignored
    assert char_similarity("", "") == 1.0
    assert char_similarity("abc", "") == 0.0


def test_unchanged_answers_did_not_forget():
    base = ["你好！我是智能助手，有什么可以帮你？", "不客气！", "3加5等于8。", "中国的首都是北京。"]
    result = probe_drift(base, list(base), REFERENCES)
    assert result.kept == 1.0
    assert result.reference_score_tuned == result.reference_score_base > 0.5
    assert not result.forgot and result.hint == ""
    assert len(result.prompts) == 4


def test_garbage_answers_forgot_with_a_hint():
    base = list(REFERENCES)
    tuned = ["鹿语，陪你慢慢生活。"] * 4  # a prefix that only knows its ad slogan
    result = probe_drift(base, tuned, REFERENCES)
    assert result.reference_score_base == 1.0
    assert result.kept < 0.2 and result.relative_drop > 0.8
    assert result.forgot
    assert result.hint == FORGET_HINT and "learning rate" in result.hint


def test_rephrased_answers_that_keep_the_facts_are_not_forgetting():
    base = ["你好！我是智能助手，有什么可以帮您？", "不客气！还有其他问题随时找我。", "3加5等于8。", "中国的首都是北京。"]
    tuned = ["您好，我是智能助手，有什么可以帮您？", "不客气，有问题随时找我。", "等于8。3加5等于8。", "首都是北京。"]
    result = probe_drift(base, tuned, REFERENCES)
    assert result.relative_drop < 0.5
    assert not result.forgot


def test_a_base_that_misses_the_references_gives_no_forgetting_verdict():
    result = probe_drift(["xyz"] * 4, ["鹿语"] * 4, REFERENCES)
    assert result.reference_score_base == 0.0 and result.relative_drop == 0.0
    assert not result.forgot


def test_probe_lists_must_line_up():
    with pytest.raises(DataError, match="2 base answers, 1 tuned answers, 2 references"):
        probe_drift(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(DataError, match="no probe prompts"):
        probe_drift([], [], [])


def test_learned_needs_a_clear_gain_over_the_base_unless_near_the_ceiling():
    assert learned(40.0 + LEARNED_MIN_GAIN, 40.0) and not learned(40.0 + LEARNED_MIN_GAIN - 0.01, 40.0)
    assert not learned(30.0, 40.0) and not learned(0.0, 0.0)
    # A base already near 100 leaves no room for the gain: a prefix as good as that has nothing left to learn.
    assert learned(100.0 - LEARNED_MIN_GAIN, 98.0) and not learned(90.0, 98.0)
