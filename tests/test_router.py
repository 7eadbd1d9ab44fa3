"""Routing: the order of stages, sticky memory, plugins, profile updates and the sample-data classifier."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from glmbot.config import settings_from_dict
from glmbot.errors import ConfigError, UnknownAdapterError, UnknownDomainError
from glmbot.serving.closest import ClosestQuestion, index_of
from glmbot.serving.router import (DEFAULT_MIN_SCORE, DomainProfile, RouteDecision, Router, StickyRoutes,
                                   content_tokens, leans_back, small_talk_only)

SAMPLES = Path(__file__).resolve().parents[1] / "glmbot" / "data" / "samples"
ADS_KEYWORDS = ["文案", "广告", "宣传语", "卖点", "种草", "带货", "商品描述"]

SUPPORT_PROMPTS = ["怎么申请退货？", "退货运费谁出？", "什么时候发货？", "发票怎么开？", "客服电话是多少？",
                   "优惠券怎么用？", "能改收货地址吗？", "快递到哪了？"]
ADS_PROMPTS = ["类型#裙*颜色#白色*风格#甜美", "类型#裤*版型#直筒*裤型#阔腿裤", "类型#上衣*材质#真丝*袖长#短袖",
               "类型#鞋*鞋跟#粗跟*颜色#黑色"]
HR_PROMPTS = ["年假有几天？", "工资几号发？", "怎么请病假？"]


def jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def hand_router(**kwargs) -> Router:
    """Three domains whose rules and prompts don't overlap, so each stage's effect is visible."""
    profiles = [
        DomainProfile("support", keywords=["退款"], patterns=[r"订单号\s*\d{6,}"], prompts=SUPPORT_PROMPTS,
                      adapter_version=2),
        DomainProfile("ads", keywords=["文案"], prompts=ADS_PROMPTS),
        DomainProfile("hr", keywords=["工资条"], prompts=HR_PROMPTS),
    ]
    return Router(profiles, **kwargs)


def always(domain: str | None):
    def plugin(text, history):
        return RouteDecision(domain, detail=f"always {domain}")
    return plugin


# ---------------------------------------------------------------------------- the order of stages

def test_explicit_beats_sticky_and_replaces_it():
    router = hand_router()
    assert router.route("我要退款", conversation_id="c1").reason == "keyword"
    decision = router.route("我要退款", conversation_id="c1", explicit="hr")
    assert (decision.domain, decision.reason, decision.score) == ("hr", "explicit", 1.0)
    later = router.route("我要退款", conversation_id="c1")
    assert (later.domain, later.reason) == ("hr", "sticky")


def test_sticky_beats_plugin():
    router = hand_router()
    first = router.route("我要退款", conversation_id="c1")
    router.add_plugin_router(always("ads"))
    again = router.route("再写一个吧", conversation_id="c1")
    assert (again.domain, again.reason, again.score) == ("support", "sticky", first.score)
    assert "keyword" in again.detail
    other = router.route("我要退款", conversation_id="c2")
    assert (other.domain, other.reason) == ("ads", "plugin")


def test_plugin_beats_rules_and_none_passes_on():
    router = hand_router()
    calls = []

    def payroll(text, history):
        calls.append((text, history))
        return RouteDecision("hr", score=0.9) if "工资" in text else None

    router.add_plugin_router(payroll)
    decision = router.route("退款和工资的问题", history=[("你好", "你好！")])
    assert (decision.domain, decision.reason, decision.score) == ("hr", "plugin", 0.9)
    assert decision.detail.endswith("payroll")  # the plugin is named when it gives no detail
    assert calls == [("退款和工资的问题", [("你好", "你好！")])]
    assert router.route("我要退款").reason == "keyword"  # the plugin said None


def test_plugins_are_asked_in_registration_order():
    router = hand_router()
    router.add_plugin_router(lambda text, history: None)
    router.add_plugin_router(always("ads"))
    router.add_plugin_router(always("hr"))
    assert router.route("随便").domain == "ads"


def test_keyword_beats_pattern():
    router = hand_router()
    decision = router.route("订单号 12345678 的文案")
    assert (decision.domain, decision.reason, decision.score) == ("ads", "keyword", 1.0)
    assert "'文案'" in decision.detail


def test_the_longest_keyword_wins_and_case_is_ignored():
    router = Router([DomainProfile("support", keywords=["退款", "vip"]), DomainProfile("ads", keywords=["退款文案"])])
    assert router.route("写一段退款文案").domain == "ads"
    assert router.route("我要退款").domain == "support"
    assert router.route("我是VIP会员").detail == "keyword 'vip'"


def test_pattern_beats_classifier():
    router = hand_router()
    text = "类型#裙*颜色#白色 订单号123456789"  # the classifier alone says ads
    assert router.explain(text)[0][0] == "ads"
    decision = router.route(text)
    assert (decision.domain, decision.reason) == ("support", "pattern")
    assert "123456789" in decision.detail


def test_classifier_beats_fallback():
    router = hand_router()
    decision = router.route("退货的运费由谁出？")
    assert (decision.domain, decision.reason) == ("support", "classifier")
    assert decision.score >= DEFAULT_MIN_SCORE
    assert set(decision.scores) == {"support", "ads", "hr"}
    assert decision.scores["support"] == decision.score > decision.scores["hr"]
    assert "active v2" in decision.detail
    assert decision.adapter is None  # None = whatever version is active when the engine loads it


def test_fallback_to_base_or_a_default_domain():
    decision = hand_router().route("今天天气真不错")
    assert (decision.domain, decision.reason, decision.score) == (None, "fallback", 0.0)
    to_ads = hand_router(fallback="ads").route("今天天气真不错")
    assert (to_ads.domain, to_ads.reason) == ("ads", "fallback")


def test_below_min_score_falls_back_with_the_scores():
    router = hand_router(min_score=0.99)
    decision = router.route("退货的运费由谁出？")
    assert (decision.domain, decision.reason) == (None, "fallback")
    assert 0 < decision.score < 0.99 and decision.scores["support"] == decision.score
    assert "< min_score 0.99" in decision.detail


# ---------------------------------------------------------------------------- explicit

def test_explicit_domain_adapter_and_base():
    router = hand_router()
    assert router.route("x", explicit="support@v3").adapter == "support@v3"
    assert router.route("x", explicit="support@3").adapter == "support@v3"
    assert router.route("x", explicit="support").adapter is None
    base = router.route("我要退款", explicit="base")
    assert (base.domain, base.adapter, base.reason) == (None, None, "explicit")


def test_small_talk_under_a_named_domain_goes_to_the_plain_base_but_not_under_a_version():
    router = hand_router()
    for social in ("谢谢", "你好！", "你是谁"):
        decision = router.route(social, conversation_id="c", explicit="support")
        assert (decision.domain, decision.adapter, decision.reason) == (None, None, "small_talk"), social
        assert "support@vN" in decision.detail
    assert router.route("谢谢，我要退款", explicit="support").domain == "support"  # it asks something
    assert router.route("谢谢", explicit="support@v2").adapter == "support@v2"  # an exact version is left alone
    assert router.route("那运费呢？", conversation_id="c").reason != "sticky"  # small talk was not remembered
    off = hand_router(small_talk_to_base=False)
    assert (off.route("谢谢", explicit="support").domain, off.route("谢谢", explicit="support").reason) == (
        "support", "explicit")


def test_unknown_explicit_domain_lists_the_known_ones():
    with pytest.raises(UnknownDomainError) as info:
        hand_router().route("x", explicit="sales@v1")
    assert "'sales'" in str(info.value) and "support, ads, hr" in str(info.value)
    with pytest.raises(UnknownAdapterError, match="support@v3"):
        hand_router().route("x", explicit="support@latest")


# ---------------------------------------------------------------------------- sticky memory

def test_fallback_is_not_sticky_so_a_greeting_does_not_pin_the_base():
    router = hand_router()
    assert router.route("你好", conversation_id="c").reason == "fallback"
    assert router.route("我要退款", conversation_id="c").domain == "support"


def test_greetings_and_thanks_skip_a_sticky_domain_but_follow_ups_keep_it():
    """A prefix may have forgotten general chat: "谢谢" after a domain answer goes to the fallback,
    which is not remembered, so the conversation's next question is still the domain's."""
    router = hand_router()
    assert router.route("我要退款", conversation_id="c").domain == "support"
    for social in ("谢谢", "好的，谢谢！", "你好", "再见", "你是谁", "你好，你能做什么？", "今天天气怎么样", "现在几点了？"):
        decision = router.route(social, conversation_id="c")
        assert (decision.domain, decision.reason) == (None, "fallback"), social
    for follow_up in ("怎么办？", "那运费呢？", "可以吗？", "现在几点发货？"):
        decision = router.route(follow_up, conversation_id="c")
        assert (decision.domain, decision.reason) == ("support", "sticky"), follow_up


def test_a_sticky_route_says_it_was_an_earlier_message_that_went_there():
    """A newcomer read "one of piano's training prompts, word for word" under a reworded question: the
    detail was the first message's. It says so now."""
    router = Router([DomainProfile("piano", prompts=["周末上课吗？", "一节课多少钱？"])])
    assert router.route("周末上课吗？", conversation_id="c").domain == "piano"
    stay = router.route("上一次课要花多少钱？", conversation_id="c")
    assert stay.reason == "sticky"
    assert stay.detail.startswith("the conversation stays with piano, where an earlier message went by classifier "
                                  "(that message: one of piano's training prompts, word for word")


def test_a_short_follow_up_leans_on_the_rounds_before_it():
    """What the engine still shows the earlier rounds on the builtin base: a short message that takes its
    topic from the round before ("那网课呢？" after a price), not a question that asks for itself."""
    leaning = ("那网课呢？", "网课呢", "那周末呢", "还有呢？", "那个多少钱？", "它贵吗", "可以吗？", "怎么办")
    assert [q for q in leaning if not leans_back(q)] == []
    asking = ("会员卡怎么办理呢？", "有网课吗？", "那如果我中途不想学了怎么办呢", "上一次课要花多少钱？", "停车方便吗")
    assert [q for q in asking if leans_back(q)] == []
    router = Router([DomainProfile("piano", prompts=["有网课吗？"])])
    assert router.prompt_of("有网课吗") == "piano" and router.prompt_of("网课") is None


def test_another_domains_keyword_moves_a_routed_conversation_but_not_a_named_one():
    router = hand_router()
    assert router.route("我要退款", conversation_id="c").domain == "support"
    moved = router.route("帮我写个文案", conversation_id="c")  # ads' keyword, none of support's
    assert (moved.domain, moved.reason) == ("ads", "keyword") and "leaves support" in moved.detail
    assert router.route("再写一个吧", conversation_id="c").domain == "ads"  # and stays there
    both = router.route("退款的文案怎么写", conversation_id="c")  # its own keyword too: stays
    assert (both.domain, both.reason) == ("ads", "sticky")
    assert router.route("订单号 12345678 查一下", conversation_id="c").domain == "support"  # a pattern moves it too
    router.route("年假有几天？", conversation_id="n", explicit="hr")
    named = router.route("我要退款", conversation_id="n")
    assert (named.domain, named.reason) == ("hr", "sticky")


def test_a_question_that_scores_high_for_another_domain_moves_the_conversation_but_a_follow_up_stays():
    router = hand_router(topic_change_score=0.45)  # 8 prompts a domain: a training prompt itself scores 0.5
    assert router.route("年假有几天？", conversation_id="c").domain == "hr"
    follow_up = router.route("那发票呢？", conversation_id="c")  # a word of support's prompts: 0.35
    assert (follow_up.domain, follow_up.reason) == ("hr", "sticky")
    moved = router.route("退货运费谁出？", conversation_id="c")  # support's own training prompt
    assert (moved.domain, moved.reason) == ("support", "classifier") and moved.score >= 0.45
    assert "leaves hr" in moved.detail
    keywords_only = hand_router(topic_change_score=1.0, leave_off_topic=False)  # the strictest stickiness
    keywords_only.route("年假有几天？", conversation_id="c")
    assert keywords_only.route("退货运费谁出？", conversation_id="c").reason == "sticky"
    with pytest.raises(ConfigError, match="topic_change_score must be in 0..1"):
        hand_router(topic_change_score=1.5)


def test_another_domains_own_question_moves_the_conversation_though_it_scores_under_the_threshold():
    # Found by a newcomer: a domain with one wording per question scores its own training question
    # 0.5 (the mean of its 2 nearest prompts), under the default 0.6, so a conversation that had gone
    # to support could not come back to that domain by asking one of its questions.
    router = hand_router()
    assert dict(router.explain("退货运费谁出？"))["support"] < router.topic_change_score
    assert router.route("年假有几天？", conversation_id="c").domain == "hr"
    assert router.route("那发票呢？", conversation_id="c").reason == "sticky"  # a follow-up still stays
    moved = router.route("退货运费谁出呢？", conversation_id="c")  # support's prompt, give or take a particle
    assert (moved.domain, moved.reason) == ("support", "classifier") and "leaves hr" in moved.detail
    back = router.route("年假有几天", conversation_id="c")
    assert (back.domain, back.reason) == ("hr", "classifier")
    assert router.route("那发票呢？", conversation_id="c").reason == "sticky"  # shares a word, is no prompt of support


def test_an_off_topic_message_leaves_the_conversations_domain_for_that_message_only():
    # Found by a newcomer: after a dental question, "帮我写一首关于春天的诗" got the dental prefix's garble.
    router = hand_router()
    assert router.route("年假有几天？", conversation_id="c").domain == "hr"
    history = [("年假有几天？", "入职满一年有5天年假，满十年10天。")]
    poem = router.route("帮我写一首关于春天的诗", conversation_id="c", history=history)
    assert (poem.domain, poem.reason) == (None, "fallback")
    assert "leave_off_topic" in poem.detail and "hr" in poem.detail
    history.append(("帮我写一首关于春天的诗", "春风拂面……"))
    back = router.route("那病假呢？", conversation_id="c", history=history)  # the conversation kept its domain
    assert (back.domain, back.reason) == ("hr", "sticky")
    # One content word, follow-up words, or words of the conversation so far: a follow-up, it stays.
    for text in ("那年终奖呢？", "再说详细一点", "满十年以后每年加几天？"):
        assert router.route(text, conversation_id="c", history=history).reason == "sticky", text
    # A domain requested by name keeps every message but small talk; the setting off keeps them all.
    assert router.route("帮我写一首关于春天的诗", explicit="hr").domain == "hr"
    strict = hand_router(leave_off_topic=False)
    strict.route("年假有几天？", conversation_id="c")
    assert strict.route("帮我写一首关于春天的诗", conversation_id="c").reason == "sticky"
    # Words of the conversation are whole words: an answer's 填写 or 关于 does not keep 写 or 关于 here.
    wordy = [("怎么请年假？", "请在系统中填写年假申请，关于年假的规定见员工手册。")]
    assert router.route("帮我写一首关于春天的诗", conversation_id="d", history=wordy).reason == "fallback"


def test_general_chat_sharing_a_word_with_the_domain_leaves_it_for_that_message():
    """Found by a newcomer: "一个星期有几天" after a laundry's "几天能取衣服？" stayed with the laundry prefix
    (几天 is one of its words) and got its garble. Its words are far closer to general chat."""
    laundry = ["几天能取衣服？", "羽绒服怎么洗？", "洗一件衬衫多少钱？", "可以上门取件吗？", "衣服洗坏了怎么赔？"]
    router = Router([DomainProfile("laundry", prompts=laundry)])
    opened = [("几天能取衣服？", "一般三天，加急第二天就能取。")]
    router.route(opened[0][0], conversation_id="c")
    week = router.route("一个星期有几天？", conversation_id="c", history=opened)
    assert (week.domain, week.reason) == (None, "fallback") and "leave_off_topic" in week.detail
    # Found by another: 帮我写一首诗 (写 and 诗 are words of one character) stayed with a bike shop's prefix.
    poem = router.route("帮我写一首诗", conversation_id="c", history=opened)
    assert (poem.domain, poem.reason) == (None, "fallback") and "leave_off_topic" in poem.detail
    asked = [*opened, ("一个星期有几天？", "七天。")]
    # The conversation keeps its domain: its follow-ups, one word or sharing the domain's, stay.
    for text in ("那周末呢？", "羽绒服要洗几天？", "加急要多少钱？", "鞋能洗吗？"):
        assert router.route(text, conversation_id="c", history=asked).domain == "laundry", text
    # Without the general-chat reference there is nothing to be closer to: it stays.
    plain = Router([DomainProfile("laundry", prompts=laundry)], general_chat=False)
    plain.route(opened[0][0], conversation_id="c")
    assert plain.route("一个星期有几天？", conversation_id="c", history=opened).reason == "sticky"


def test_an_off_topic_message_may_move_the_conversation_to_another_domain():
    router = hand_router()
    router.route("年假有几天？", conversation_id="c")
    asked = [("年假有几天？", "十五天。")]
    moved = router.route("退货的运费谁来出？", conversation_id="c", history=asked)  # support's words (0.35), none of hr's
    assert (moved.domain, moved.reason) == ("support", "classifier") and "leave_off_topic" in moved.detail
    assert router.route("那运费呢？", conversation_id="c").domain == "support"
    # topic_change_score = 1: only keywords and patterns move a conversation, off-topic or not.
    keywords_only = hand_router(topic_change_score=1.0)
    keywords_only.route("年假有几天？", conversation_id="c")
    assert keywords_only.route("退货的运费谁来出？", conversation_id="c", history=asked).reason == "sticky"
    assert keywords_only.route("帮我写一首关于春天的诗", conversation_id="c", history=asked).reason == "fallback"


def test_a_domain_whose_prompts_never_described_the_conversation_keeps_its_follow_ups():
    # ads is reached by its keyword 文案; its prompts are attribute strings (类型#裙*颜色#白色), so a
    # follow-up in plain words shares none of them and must not be taken for an off-topic message.
    router = hand_router()
    asked = [("帮我写个连衣裙文案", "这款连衣裙清新甜美，适合春夏。")]
    assert router.route("帮我写个连衣裙文案", conversation_id="c").domain == "ads"
    for text in ("再写一个更活泼的版本", "换成适合秋天穿搭的风格"):
        assert router.route(text, conversation_id="c", history=asked).reason == "sticky", text


def test_a_conversation_without_memory_is_replayed_from_its_history():
    # Found by a newcomer: OpenAI clients send the whole conversation with a new (or no) id each time,
    # and the follow-up "那要拍片吗？" then fell to the plain base.
    router = hand_router()
    history = [("你好", "你好！有什么可以帮您？"), ("怎么请病假？", "在系统里提交病假申请并附医院证明。")]
    for cid in (None, "new-id"):
        follow_up = router.route("那年假呢？", conversation_id=cid, history=history)
        assert (follow_up.domain, follow_up.reason) == ("hr", "sticky") and "replayed" in follow_up.detail
    # Without the history it is no follow-up: its words alone reach no domain (the second look finds hr by 年假).
    assert hand_router(second_look=False).route("那年假呢？").reason == "fallback"
    assert router.route("那年假呢？").reason == "second_look"
    assert router.remembered == 1  # "new-id" keeps the replayed route: its next request is not replayed again
    assert router.route("那调休呢？", conversation_id="new-id").domain == "hr"
    # The replay moves as a remembered conversation would: a keyword of support, none of hr's.
    moved = history + [("我要退款", "请提供订单号。")]
    assert router.route("那运费呢？", history=moved).domain == "support"
    calls = []
    router.add_plugin_router(lambda text, rounds: calls.append(text))
    assert router.route("那年假呢？", history=history).reason == "sticky"
    assert calls == []  # the replay asks no plugin router about the earlier questions
    router.route("推荐一部好看的电影", history=history)
    assert calls == ["推荐一部好看的电影"]  # off hr's topic: routed afresh, plugin routers first


def test_explicit_base_is_sticky():
    router = hand_router()
    router.route("你好", conversation_id="c", explicit="base")
    decision = router.route("我要退款", conversation_id="c")
    assert (decision.domain, decision.reason) == (None, "sticky")


def test_forget_and_sticky_off():
    router = hand_router()
    router.route("我要退款", conversation_id="c")
    assert router.forget("c") is True and router.forget("c") is False
    assert router.route("写文案", conversation_id="c").domain == "ads"
    unsticky = hand_router(sticky=False)
    unsticky.route("我要退款", conversation_id="c")
    assert unsticky.route("写文案", conversation_id="c").domain == "ads"


def test_sticky_memory_is_a_bounded_lru():
    memory = StickyRoutes(capacity=2)
    decision = RouteDecision("support", reason="keyword")
    memory.put("a", decision)
    memory.put("b", decision)
    assert memory.get("a") is decision  # "a" is now the most recently used
    memory.put("c", decision)
    assert (memory.get("a"), memory.get("b"), memory.get("c")) == (decision, None, decision)
    assert len(memory) == 2


def test_sticky_memory_under_concurrent_routing():
    router = hand_router(sticky_capacity=50)
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                cid = f"{n}-{i}"
                assert router.route("我要退款", conversation_id=cid).reason == "keyword"
                assert router.route("写文案", conversation_id=cid).reason in ("sticky", "keyword")
        except Exception as exc:  # collected: an exception in a thread would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert router.remembered == 50


# ---------------------------------------------------------------------------- changes and bad input

def test_update_profiles_adds_replaces_and_removes():
    router = hand_router()
    router.route("我要退款", conversation_id="c")
    router.update_profiles([DomainProfile("legal", keywords=["合同"]),
                            DomainProfile("ads", keywords=["文案", "广告"], prompts=ADS_PROMPTS)],
                           remove=["support"])
    assert router.domains == ["ads", "hr", "legal"]
    assert router.route("合同纠纷").domain == "legal"
    assert router.route("写个广告").domain == "ads"
    assert router.route("我要退款", conversation_id="c").reason != "sticky"  # its domain is gone
    with pytest.raises(UnknownDomainError, match="'support'"):
        router.route("x", explicit="support")
    with pytest.raises(UnknownDomainError, match="cannot remove unknown domain 'nope'"):
        router.update_profiles([], remove=["nope"])


def test_update_profiles_keeps_the_fallback_domain():
    router = hand_router(fallback="ads")
    with pytest.raises(ConfigError, match="routing.fallback = 'ads'"):
        router.update_profiles([], remove=["ads"])
    assert "ads" in router.domains  # a refused update changes nothing


def test_bad_profiles_and_settings_are_refused():
    with pytest.raises(ConfigError, match="reserved"):
        DomainProfile("base")
    with pytest.raises(ConfigError, match="not a valid domain name"):
        DomainProfile("Support")
    with pytest.raises(ConfigError, match="keyword '' is empty"):
        DomainProfile("support", keywords=[""])
    with pytest.raises(ConfigError, match="listed twice"):
        Router([DomainProfile("support"), DomainProfile("support")])
    with pytest.raises(ConfigError, match=r"pattern '\(' is not a valid regular expression"):
        Router([DomainProfile("support", patterns=["("])])
    with pytest.raises(ConfigError, match="routing.fallback = 'sales' is not a domain"):
        Router([DomainProfile("support")], fallback="sales")
    with pytest.raises(ConfigError, match="min_score must be in 0..1"):
        Router([DomainProfile("support")], min_score=1.5)
    with pytest.raises(ValueError, match="reason 'magic'"):
        RouteDecision("support", reason="magic")
    with pytest.raises(TypeError, match="got NoneType"):
        hand_router().route(None)


def test_bad_plugins_are_refused_or_skipped(caplog):
    router = hand_router()
    plugin = always("ads")
    router.add_plugin_router(plugin)
    with pytest.raises(ValueError, match="already registered"):
        router.add_plugin_router(plugin)
    with pytest.raises(TypeError, match="must be callable"):
        router.add_plugin_router("ads")
    # A plugin that answers wrongly, names an unknown domain or raises is skipped: routing goes on.
    for bad in (lambda text, history: "ads", always("sales"), lambda text, history: 1 / 0):
        broken = hand_router()
        broken.add_plugin_router(bad)
        assert broken.route("怎么申请退货").reason != "plugin"
    assert "returned 'ads'" in caplog.text and "unknown domain 'sales'" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_explain_ranks_every_domain():
    ranking = hand_router().explain("怎么申请退货")
    assert [name for name, _ in ranking][0] == "support"
    assert sorted(name for name, _ in ranking) == ["ads", "hr", "support"]
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)
    assert ranking[0][1] > 0.3 and ranking[-1][1] == 0.0


def test_from_settings_uses_the_config_and_registry_domains():
    settings = settings_from_dict({
        "routing": {"fallback": "support", "min_score": 0.3, "sticky": False},
        "domains": {"support": {"keywords": ["退款"], "patterns": ["订单号\\d+"]}, "ads": {"keywords": ["文案"]}},
    })
    router = Router.from_settings(settings, {"support": SUPPORT_PROMPTS, "hr": HR_PROMPTS}, versions={"ads": 4})
    assert router.domains == ["support", "ads", "hr"]  # config order, then registry-only domains
    assert (router.fallback, router.min_score, router.sticky) == ("support", 0.3, False)
    assert router.route("订单号123").reason == "pattern"
    assert router.route("年假有几天？").domain == "hr"
    assert "active v4" in router.route("写文案").detail


# ---------------------------------------------------------------------------- the sample data

@pytest.fixture(scope="module")
def sample_router() -> Router:
    support = [row["prompt"] for row in jsonl("support_train.jsonl")]
    ads = [row["content"] for row in jsonl("ads_train.jsonl")]
    return Router([DomainProfile("support", prompts=support),
                   DomainProfile("ads", keywords=ADS_KEYWORDS, prompts=ads)])


def test_heldout_routing_accuracy(sample_router):
    rows = jsonl("routing_heldout.jsonl")
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in rows:
        decision = sample_router.route(row["text"])
        total[row["domain"]] += 1
        correct[row["domain"]] += (decision.domain or "base") == row["domain"]
    assert set(total) == {"support", "ads", "base"}
    assert sum(correct.values()) / len(rows) >= 0.85
    # Measured 19/20, 19/20, 17/20; a drop below 80% in any class is a regression.
    assert all(correct[name] / total[name] >= 0.8 for name in total), dict(correct)


def test_attribute_strings_reach_ads_through_the_classifier(sample_router):
    decision = sample_router.route("类型#鞋*材质#帆布*颜色#白色*鞋样式#运动鞋")
    assert (decision.domain, decision.reason) == ("ads", "classifier")


@pytest.mark.parametrize("text", ["你好", "在吗", "谢谢", "你好！在吗？", "晚上好", "嗯嗯，好的谢谢", "你是谁？"])
def test_greetings_go_to_the_base(sample_router, text):
    assert content_tokens(text) == []
    decision = sample_router.route(text)
    assert (decision.domain, decision.reason) == (None, "fallback")
    assert "greetings" in decision.detail


def test_greetings_do_not_hide_the_question(sample_router):
    decision = sample_router.route("你好，退款多久到账？")
    assert (decision.domain, decision.reason) == ("support", "classifier")
    assert content_tokens("你会做什么菜？") == ["菜"]  # a question about the assistant keeps what it asks


def test_chit_chat_with_a_time_or_a_place_goes_to_the_base(sample_router):
    """"今天北京天气怎么样" reached the support prefix (0.56: 今天 and 北京 are words of two shop questions);
    beside a chit-chat question words of time and place ask nothing of a domain, in a new conversation
    and in one routed to a domain. A question beside the chit-chat still routes."""
    assert sample_router.explain("今天北京天气怎么样？")[0][1] == 0.0
    for text in ("今天北京天气怎么样？", "北京今天天气如何", "上海明天会下雨吗", "现在几点了？"):
        assert content_tokens(text) == [], text
        assert sample_router.route(text).domain is None, text
        assert small_talk_only(text), text
    assert sample_router.route("我要退款", conversation_id="weather").domain == "support"
    decision = sample_router.route("这周末杭州天气怎么样", conversation_id="weather")
    assert (decision.domain, decision.reason) == (None, "fallback")
    assert sample_router.route("那运费呢？", conversation_id="weather").domain == "support"
    assert sample_router.route("今天天气怎么样？今天下单能发货吗？").domain == "support"
    # the reason names the small talk (it said "only greetings, chit-chat, stop-words or punctuation")
    assert sample_router.route("北京今天天气怎么样？").detail == "small talk (今天天气怎么样), nothing else a domain could answer"
    assert content_tokens("今天下单什么时候到") == ["今天", "下单", "时候", "到"]  # no chit-chat: time words count


def test_a_training_prompt_of_stop_words_alone_reaches_its_domain():
    """Found by a newcomer: a yoga studio's "你们在哪里？" has no content word, went to the plain base
    and got a made-up address. A message that is one domain's training prompt word for word goes there;
    small talk stays small talk, and a prompt of two domains decides nothing."""
    yoga = DomainProfile("yoga", prompts=["你们在哪里？", "年卡多少钱？", "你好", "可以吗？"])
    router = Router([DomainProfile("support", prompts=[*SUPPORT_PROMPTS, "可以吗？"]), yoga])
    assert content_tokens("你们在哪里？") == []
    decision = router.route("你们在哪里")  # punctuation aside
    assert (decision.domain, decision.reason, decision.score) == ("yoga", "classifier", 1.0)
    assert "word for word" in decision.detail
    assert router.route("你好").domain is None  # a training prompt, but small talk alone
    assert router.route("可以吗？").domain is None  # both domains' prompt
    assert router.route("怎么申请退货？", conversation_id="c").domain == "support"
    moved = router.route("你们在哪里？", conversation_id="c")  # another domain's prompt moves the conversation
    assert (moved.domain, moved.reason) == ("yoga", "classifier") and "leaves support" in moved.detail


def test_a_one_word_follow_up_does_not_move_the_conversation_on_its_score():
    """Found by a newcomer: "那周末呢？" after a yoga studio's opening hours scored 0.79 for the shop's
    support domain (two of its questions say 周末) and the conversation left for its garble."""
    support = [*SUPPORT_PROMPTS, "周末发货吗？", "周末客服上班吗？"]
    # without the general-chat reference in the IDF (周末 is common in everyday chat), it scores >= 0.6 here
    router = Router([DomainProfile("support", prompts=support),
                     DomainProfile("yoga", prompts=["周一到周五几点开门？", "年卡多少钱？", "你们在哪里？"])],
                    general_chat=False)
    assert router.explain("那周末呢？")[0][0] == "support" and router.explain("那周末呢？")[0][1] >= 0.6
    assert router.route("周一到周五几点开门？", conversation_id="c").domain == "yoga"
    follow_up = router.route("那周末呢？", conversation_id="c")
    assert (follow_up.domain, follow_up.reason) == ("yoga", "sticky")
    moved = router.route("周末客服上班吗", conversation_id="c")  # two words, and support's own question
    assert (moved.domain, moved.reason) == ("support", "classifier")


def test_a_system_prompt_is_not_routed_on():
    """ChatGLM2 puts the system message in front of the question; a system prompt naming a domain's
    keyword (你是退款客服) sent 你好 and a poem request to that domain's prefix, which garbled them."""
    from glmbot.serving.requests import GenerationRequest, chat_turns
    from glmbot.serving.routing_setup import route_request

    router, settings = hand_router(), settings_from_dict({})

    def route(user: str, system: str, **kw):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        request = GenerationRequest(messages=messages, **kw)
        query, history = chat_turns(request)
        assert query == system + user  # the model still sees the system prompt
        return route_request(router, settings, None, request, query, history)

    assert route("你好", "你是退款客服。").domain is None
    assert route("帮我写一首诗", "你是退款客服。").domain is None
    assert route("我要退款", "你是客服。").domain == "support"  # the user's own words still route
    request = GenerationRequest(query="你好", system="你是退款客服。")
    assert route_request(router, settings, None, request, *chat_turns(request)).domain is None


# ---------------------------------------------------------------------------- the second look

IT_HELPDESK = Path(__file__).resolve().parents[1] / "bench" / "domains" / "it_helpdesk" / "train.jsonl"


def it_router(**kwargs) -> Router:
    prompts = [json.loads(line)["prompt"] for line in IT_HELPDESK.read_text(encoding="utf-8").splitlines() if line]
    return Router([DomainProfile("it", prompts=prompts)], **kwargs)


def test_a_rewording_that_shares_characters_but_no_word_gets_a_second_look():
    """输错密码账号锁了怎么解 shares 密码 and 账号 with the IT desk's questions, but 锁 is a word of its own here
    and 锁定 there: under min_score, the word classifier sent it to the plain base, which made up an answer;
    the character 锁 of 锁定 takes it to the domain. (With the general-chat reference in the word classifier's
    IDF, the default, 密码 and 账号 weigh more and the words alone reach the domain: that is left out here.)"""
    words_only = it_router(second_look=False, general_chat=False).route("输错密码账号锁了怎么解？")
    assert (words_only.domain, words_only.reason) == (None, "fallback")
    decision = it_router(general_chat=False).route("输错密码账号锁了怎么解？")
    assert (decision.domain, decision.reason) == ("it", "second_look")
    assert "more than general chat" in decision.detail
    assert decision.score >= 0.6 * DEFAULT_MIN_SCORE


@pytest.mark.parametrize("text", ["帮我写一首关于春天的诗", "给我讲个冷笑话", "红烧肉怎么做", "你觉得人生的意义是什么",
                                  "去云南旅游有什么建议", "今天心情不太好"])
def test_general_chat_stays_with_the_base_after_a_second_look(text):
    decision = it_router().route(text)
    assert decision.domain is None, decision.detail
    # The fallback says what the second look saw, so `glmbot route` does not look wrong where characters are shared.
    seen = decision.detail.partition("by its characters too: ")[2]
    assert "general chat" in seen or "needs" in seen, decision.detail


def test_a_broad_domain_needs_a_higher_second_look_score():
    """Each domain's bar is what nearly all the general-chat reference scores for it: the shop's 225 broad
    questions share characters with everyday chat far more than a 30-line IT FAQ does."""
    support = [row["prompt"] for row in jsonl("support_train.jsonl")]
    it = [json.loads(line)["prompt"] for line in IT_HELPDESK.read_text(encoding="utf-8").splitlines() if line]
    table = Router([DomainProfile("support", prompts=support), DomainProfile("it", prompts=it)])._table
    assert table.second.thresholds["support"] > table.second.thresholds["it"]
    # Words of support below min_score, characters too: still the plain base.
    assert Router([DomainProfile("support", prompts=support)]).route("你会不会累啊").domain is None


def test_second_look_follows_min_score_and_can_be_turned_off():
    assert it_router(min_score=0.99).route("输错密码账号锁了怎么解？").domain is None
    it = [DomainProfile("it", prompts=["账号被锁定了怎么办？", "VPN怎么连接？", "打印机卡纸怎么处理？"])]
    off = Router.configured(it, settings_from_dict({"routing": {"second_look": False}}).routing)
    assert off.route("账号锁了怎么解开").domain is None
    assert Router.configured(it, settings_from_dict({}).routing).route("账号锁了怎么解开").domain == "it"


def test_the_general_chat_reference_holds_no_held_out_message():
    """glmbot/data/general_chat.txt (scripts/make_general_chat.py) must not contain what the routing is
    measured on: bench/routing's sets, the held-out domains' paraphrases, routing_heldout.jsonl."""
    from glmbot.serving.router import general_chat

    reference = {line.strip().rstrip("？?。！!") for line in general_chat()}
    assert len(reference) > 300
    root = Path(__file__).resolve().parents[1]
    held_out = [row["text"] for row in jsonl("routing_heldout.jsonl")]
    for path in [*(root / "bench" / "routing").rglob("*.jsonl"), *(root / "bench" / "domains").rglob("*.jsonl")]:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            held_out.append(row.get("text") or row["prompt"])
    assert len(held_out) > 400
    assert not [text for text in held_out if text.strip().rstrip("？?。！!") in reference]


def test_a_conversation_the_second_look_opened_lets_general_chat_leave():
    """打印卡住了 shares no word with the IT desk's questions (打印机, 卡纸), only characters: the conversation
    it opens is still the domain's, so 帮我写一首关于春天的诗 leaves it for the plain base (leave_off_topic), and
    a follow-up stays."""
    it = [DomainProfile("it", prompts=["账号被锁定了怎么办？", "VPN怎么连接？", "打印机卡纸怎么处理？", "密码忘了怎么重置？",
                                       "邮箱满了怎么办？", "电脑很卡怎么办？"])]
    router = Router(it)
    assert router._table.classifier.token_scores(content_tokens("打印卡住了"))["it"] == 0.0
    history = []
    for text, want, reason in (("打印卡住了", "it", "second_look"), ("帮我写一首关于春天的诗", None, "fallback"),
                               ("那要等多久呢", "it", "sticky")):
        decision = router.route(text, conversation_id="c", history=list(history))
        assert (decision.domain, decision.reason) == (want, reason), (text, decision.detail)
        history.append((text, "……"))
    # A stateless client (a new id each time) gets the same routes from the replayed history.
    replayed = router.route("帮我写一首关于春天的诗", conversation_id="other", history=history[:1])
    assert replayed.domain is None and "leave_off_topic" in replayed.detail


def test_a_message_closer_to_general_chat_than_to_any_domain_goes_to_the_base():
    """一个星期有几天？ shares 几天 with the shop's refund questions (0.40 for support by words alone) and got the
    support prefix's garble; its words are closer to the reference of general chat ([routing] general_chat)."""
    support = [row["prompt"] for row in jsonl("support_train.jsonl")]
    words = Router([DomainProfile("support", prompts=support)], general_chat=False).route("一个星期有几天？")
    assert (words.domain, words.reason) == ("support", "classifier")
    decision = Router([DomainProfile("support", prompts=support)]).route("一个星期有几天？")
    assert (decision.domain, decision.reason) == (None, "fallback")
    assert "its words are closer to general chat" in decision.detail
    refund = Router([DomainProfile("support", prompts=support)]).route("退货几天能到账？")
    assert (refund.domain, refund.reason) == ("support", "classifier")


def test_a_rewording_finds_the_one_training_question_it_stands_for():
    """[serving] closest_question: a question close to one training question by its words and their
    characters, and to no other, stands for it; a training question itself, a question about as close to
    two of them, and one sharing no word stand for none."""
    closest = ClosestQuestion(["年假有几天？", "工资几号发？", "加班工资怎么算？", "病假工资怎么算？", "离职要提前多久说？"])
    assert closest.find("加班的工资怎么计算？") == "加班工资怎么算？"
    assert closest.find("公司年假一年能休几天？") == "年假有几天？"
    assert closest.find("辞职得提前几天讲？") == "离职要提前多久说？"  # 提前, and 职 of 离职 and 辞职
    assert closest.find("工资怎么算？") is None       # 加班工资 or 病假工资: 0.68 against 0.71, no margin
    assert closest.find("年假有几天") is None         # the training question itself, without its mark
    assert closest.find("食堂几点开饭？") is None     # no word in common
    assert closest.find("你好") is None
    # a short follow-up asks, with the question before it, the one that holds its own word
    assert closest.follow_up("那病假呢？", "加班工资怎么算？") == "病假工资怎么算？"
    assert closest.follow_up("那离职呢", "年假有几天？") == "离职要提前多久说？"
    assert closest.follow_up("那加班呢？", "加班工资怎么算？") is None  # only the earlier question holds 加班
    assert closest.follow_up("还有呢？", "年假有几天？") is None        # no word of its own
    assert closest.follow_up("那食堂呢？", "年假有几天？") is None      # in no training question
    # its own word, not a character the earlier question holds too: 换货 shares 货 with 退货, and
    # 退货多久能到账？ (found in `glmbot chat` after 退货多久到账？) is not what 那换货呢？ asks
    shop = ClosestQuestion(["退货多久能到账？", "可以换货吗？", "运费谁出？"])
    assert shop.follow_up("那换货呢？", "退货多久到账？") == "可以换货吗？"
    # AdvertiseGen's attribute strings are not questions: 颜色#黑色 asks for another text than 颜色#白色
    ads = ["类型#裙*颜色#白色*风格#甜美", "类型#裤*材质#牛仔布*风格#简约"]
    assert index_of("advertisegen", ["年假有几天？"]) is None and index_of(None, ads) is None
    assert index_of("chat", ads) is not None and index_of(None, ["年假有几天？", "工资几号发？"]) is not None
    assert index_of("chat", []) is None and index_of(None, None) is None  # an imported adapter records none
