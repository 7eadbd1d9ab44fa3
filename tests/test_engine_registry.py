"""The engine over a real Registry (SQLite in tmp_path): routing to each domain's active adapter,
the prefix cache under a small budget, damaged and foreign adapters, promotions, `glmbot route`."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from conftest import small_config, small_model
from test_engine import QUERIES, base, greedy, oracle, tok  # noqa: F401 - fixtures
from typer.testing import CliRunner

from glmbot.config import Settings, settings_from_dict
from glmbot.errors import (AdapterIntegrityError, ConfigError, PrefixCheckpointError, UnknownAdapterError,
                           UnknownDomainError)
from glmbot.model.fingerprint import architecture, base_fingerprint, base_fingerprints
from glmbot.model.generate import generate_answers
from glmbot.model.prefix import PrefixEncoder
from glmbot.model.prefix_io import encoder_state
from glmbot.registry import Registry
from glmbot.serving import routing_setup
from glmbot.serving.engine import Engine
from glmbot.serving.prefix_cache import MIB
from glmbot.serving.requests import GenerationRequest
from glmbot.serving.routing_setup import build_router

KEYWORDS = {"support": "refund", "ads": "slogan", "hr": "salary", "legal": "contract", "it": "laptop"}
LENGTHS = {"support": 4, "ads": 6, "hr": 2, "legal": 4, "it": 4}


@pytest.fixture
def registry(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "adapters", busy_timeout_s=10)
    yield reg
    reg.close()


BASE_FINGERPRINT = base_fingerprint(small_model())  # test_engine's `base`: the engine serves only its adapters


def add_adapter(reg: Registry, domain: str, length: int, seed: int, config=None, promote: bool = True,
                prompts: list[str] | None = None, hyperparams: dict | None = None,
                fingerprint: str = BASE_FINGERPRINT) -> torch.Tensor:
    """Register (and promote) a random prefix; returns its KV (2L, G, P, D) for the oracle."""
    config = config or small_config()
    reg.ensure_domain(domain)
    torch.manual_seed(seed)
    encoder = PrefixEncoder(config, length)
    info = reg.register_adapter(domain, encoder_state(encoder), base_model="builtin:test",
                                base_fingerprint=fingerprint, architecture=architecture(config),
                                routing_prompts=prompts, hyperparams=hyperparams)
    if promote:
        reg.promote(info.ref)
    return encoder.kv().detach()


@pytest.fixture
def five_domains(registry) -> dict[str, torch.Tensor]:
    kvs = {}
    for seed, (domain, keyword) in enumerate(KEYWORDS.items()):
        registry.add_domain(domain, keywords=[keyword])
        kvs[domain] = add_adapter(registry, domain, LENGTHS[domain], seed, prompts=[f"{keyword} 问题"])
    return kvs


def test_fifty_concurrent_requests_over_five_domains_are_routed_and_match_solo_runs(base, tok, registry,
                                                                                   five_domains):
    router = build_router(Settings(), registry)
    assert router.domains == sorted(KEYWORDS)
    plan = [(list(KEYWORDS)[i % 5], f"{list(KEYWORDS.values())[i % 5]} {QUERIES[i % 6]}") for i in range(50)]
    with Engine(base, tok, registry=registry, router=router, max_batch_size=16, max_len=96) as engine:
        results = engine.generate_many([greedy(text, None, 8) for _, text in plan])
        solo = {text: engine.generate(greedy(text, None, 8)) for _, text in dict.fromkeys(plan)}
        stats = engine.stats()
    assert stats.peak_rows == 16 and stats.prefix_cache.misses == 5
    for (domain, text), result in zip(plan, results):
        assert (result.route.domain, result.route.reason) == (domain, "keyword")
        assert (result.adapter, result.adapter_version) == (f"{domain}@v1", 1)
        assert result.token_ids == solo[text].token_ids
    for domain, text in plan[:5]:
        assert solo[text].text == oracle(base, tok, text, five_domains[domain], 8)


def test_lru_budget_of_two_prefixes_evicts_and_reloads_with_correct_outputs(base, tok, registry):
    kvs = {d: add_adapter(registry, d, 4, seed) for seed, d in enumerate(["support", "ads", "hr", "legal"])}
    settings = Settings()
    entry = kvs["support"].numel() * 4  # fp32 on CPU
    settings.serving.prefix_cache_mib = 2 * entry / MIB
    with Engine(base, tok, registry=registry, settings=settings, max_batch_size=4, max_len=64) as engine:
        rounds = [[engine.generate(greedy(QUERIES[0], d, 6)) for d in kvs] for _ in range(2)]
        together = engine.generate_many([greedy(QUERIES[0], d, 6) for d in kvs])
        stats = engine.stats().prefix_cache
    assert stats.misses >= 8 and stats.evictions >= 6  # every domain reloaded in round two
    assert stats.entries == 2 and stats.bytes == 2 * entry <= stats.capacity_bytes
    for first, second, both, domain in zip(*rounds, together, kvs):
        assert first.token_ids == second.token_ids == both.token_ids
        assert first.text == oracle(base, tok, QUERIES[0], kvs[domain], 6)


def test_pinned_adapters_from_settings_stay_resident_under_pressure(base, tok, registry):
    kvs = {d: add_adapter(registry, d, 4, seed) for seed, d in enumerate(["support", "ads", "hr", "legal"])}
    settings = Settings()
    settings.serving.prefix_cache_mib = 2 * kvs["support"].numel() * 4 / MIB
    settings.serving.pin = ["support"]
    with Engine(base, tok, registry=registry, settings=settings, max_batch_size=2, max_len=64) as engine:
        assert engine.stats().prefix_cache.pinned == 1  # loaded at start
        for domain in ["ads", "hr", "legal", "support", "ads", "support"]:
            engine.generate(greedy(QUERIES[0], domain, 2))
        stats = engine.stats().prefix_cache
    assert stats.pinned == 1 and stats.misses == 5 and stats.hits == 2  # support never reloaded


def test_a_corrupted_adapter_fails_only_its_own_requests(base, tok, registry, five_domains, tmp_path):
    weights = tmp_path / "adapters" / "legal" / "v1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    domains = ["support", "legal", "ads", "legal", None]
    with Engine(base, tok, registry=registry, max_batch_size=8, max_len=64) as engine:
        results = engine.generate_many([greedy(QUERIES[1], d, 6) for d in domains], return_exceptions=True)
    for domain, result in zip(domains, results):
        if domain == "legal":
            assert isinstance(result, AdapterIntegrityError) and "legal@v1" in str(result)
            assert "adapter_model.safetensors" in str(result)
        else:
            assert result.text == oracle(base, tok, QUERIES[1], five_domains.get(domain), 6)


def test_an_adapter_for_another_base_is_refused_with_a_clear_error(base, tok, registry, five_domains):
    add_adapter(registry, "foreign", 4, 9, config=small_config(num_layers=3))
    with Engine(base, tok, registry=registry, max_batch_size=4, max_len=64) as engine:
        handles = [engine.submit(greedy(QUERIES[0], d, 4)) for d in ("foreign", "support")]
        with pytest.raises(PrefixCheckpointError, match="does not fit this base"):
            handles[0].result()
        assert handles[1].result().adapter == "support@v1"
        with pytest.raises(UnknownAdapterError, match="has no version v7"):
            engine.generate(GenerationRequest(query="hi", adapter="support@v7", max_new_tokens=4))


def test_an_adapter_trained_on_other_weights_of_the_same_shape_is_refused(base, tok, registry, five_domains):
    """Same architecture, another base's weights (the builtin base of 2026-12-04 against today's): its
    prefix would fit and answer nonsense, so it is refused, naming both fingerprints and the fix."""
    other = base_fingerprint(small_model(seed=1))
    assert other != BASE_FINGERPRINT
    add_adapter(registry, "legacy", 4, 9, fingerprint=other)
    with Engine(base, tok, registry=registry, max_batch_size=4, max_len=64) as engine:
        with pytest.raises(PrefixCheckpointError) as info:
            engine.generate(greedy(QUERIES[0], "legacy", 4))
        assert engine.generate(greedy(QUERIES[0], "support", 4)).adapter == "support@v1"
    message = str(info.value)
    assert other in message and BASE_FINGERPRINT in message and "glmbot train --domain legacy" in message


def test_a_fingerprint_does_not_change_with_the_dtype_the_base_is_loaded_in():
    """fp16 weights (ChatGLM2-6B's files) loaded as float16, float32 or bfloat16: one fingerprint."""
    half = small_model().half()
    full = small_model().half().float()
    brain = small_model().half().to(torch.bfloat16)
    assert base_fingerprint(half) == base_fingerprint(full) == base_fingerprint(brain)
    assert base_fingerprint(small_model(seed=1)) != base_fingerprint(small_model())
    # adapters registered before the rounding recorded the unrounded sample: still served
    assert base_fingerprints(half)[1] != base_fingerprints(half)[0] and len(set(base_fingerprints(brain))) == 1


def test_an_adapter_with_the_fingerprint_of_before_the_rounding_is_still_served(tok, registry):
    """A fp16 base: adapters registered before 2026-12-05 carry the unrounded fingerprint."""
    half_base = small_model().half().float()  # fp16 weights, served in fp32
    legacy = base_fingerprints(half_base)[1]
    add_adapter(registry, "older", 4, 3, fingerprint=legacy)
    with Engine(half_base, tok, registry=registry, max_batch_size=2, max_len=64) as engine:
        assert engine.generate(greedy(QUERIES[0], "older", 4)).adapter == "older@v1"


def test_a_promotion_is_seen_by_the_next_request(base, tok, registry, five_domains):
    with Engine(base, tok, registry=registry, max_batch_size=4, max_len=64) as engine:
        before = engine.generate(greedy(QUERIES[2], "support", 6))
        new_kv = add_adapter(registry, "support", 5, 42)
        after = engine.generate(greedy(QUERIES[2], "support", 6))
        pinned_old = engine.generate(greedy(QUERIES[2], None, 6, adapter="support@v1"))
        assert engine.invalidate_domain("support") == 2
        assert engine.stats().prefix_cache.entries == 0
    assert (before.adapter, after.adapter, pinned_old.adapter) == ("support@v1", "support@v2", "support@v1")
    assert after.text == oracle(base, tok, QUERIES[2], new_kv, 6)
    assert pinned_old.token_ids == before.token_ids


def test_build_router_uses_adapter_prompts_then_config_data_and_skips_untrained(registry):
    registry.add_domain("support", keywords=["转人工"])
    add_adapter(registry, "support", 4, 1)  # no routing_prompts.json: glmbot.toml's data file
    add_adapter(registry, "ads", 4, 2, prompts=["类型#裙*颜色#白色*风格#甜美", "类型#裤*版型#直筒"])
    add_adapter(registry, "hr", 4, 3, promote=False, prompts=["年假有几天？"])
    settings = settings_from_dict({"domains": {"support": {"data": "builtin:support", "keywords": ["人工客服"]}}})
    router = build_router(settings, registry)
    assert router.domains == ["ads", "support"]  # hr has no active adapter
    assert router.route("类型#裙*颜色#白色").domain == "ads"
    assert router.route("我的快递到哪了？退货运费谁出？").domain == "support"  # prompts of builtin:support
    assert router.route("人工客服在吗").reason == "keyword" and router.route("转人工").domain == "support"
    with pytest.raises(ConfigError, match="fallback = 'hr' has no active adapter"):
        build_router(settings_from_dict({"routing": {"fallback": "hr"}}), registry)


def test_route_command_prints_the_decision_and_every_score(tmp_path, monkeypatch):
    from glmbot.cli import common
    from glmbot.cli.route import route

    (tmp_path / "glmbot.toml").write_text('[registry]\nadapters_dir = "adapters"\n', encoding="utf-8")
    monkeypatch.delenv("GLMBOT_DB_URL", raising=False)
    reg = Registry(f"sqlite:///{tmp_path / 'adapters' / 'registry.db'}", tmp_path / "adapters")
    reg.add_domain("ads", keywords=["文案"])
    add_adapter(reg, "ads", 4, 2, prompts=["类型#裙*颜色#白色*风格#甜美"])
    add_adapter(reg, "hr", 4, 3, prompts=["加班工资怎么算？", "病假工资怎么算？", "年假有几天？"])
    reg.close()
    app = typer.Typer()
    app.command()(route)
    common.set_config_path(tmp_path / "glmbot.toml")
    try:
        by_keyword = CliRunner().invoke(app, ["帮我写个文案"])
        by_class = CliRunner().invoke(app, ["类型#裙*颜色#白色"])
        explicit = CliRunner().invoke(app, ["你好", "--domain", "base"])
        reworded = CliRunner().invoke(app, ["加班的工资怎么计算？", "--json"])
        reworded_text = CliRunner().invoke(app, ["加班的工资怎么计算？"])
    finally:
        common.set_config_path(None)
    assert by_keyword.exit_code == 0, by_keyword.output
    assert "ads@v1 (active)" in by_keyword.output and "keyword" in by_keyword.output
    assert "'文案'" in by_keyword.output and "Classifier scores" in by_keyword.output
    assert "classifier" in by_class.output and "chosen" in by_class.output
    # a domain reached by another stage than these scores says which (a newcomer read "chosen" at 0.000)
    assert "chosen by keyword" in by_keyword.output and "chosen by" not in by_class.output
    assert "base (plain model)" in explicit.output and "explicit" in explicit.output
    assert json.loads((tmp_path / "adapters" / "ads" / "v1" / "routing_prompts.json").read_text())
    # on the builtin base (the default base_model) a rewording is asked as its closest training question
    assert reworded.exit_code == 0, reworded.output
    assert json.loads(reworded.output)["asked_as"] == "加班工资怎么算？"
    assert "asked as: 加班工资怎么算？" in reworded_text.output and "[serving] closest_question" in reworded_text.output
    assert "asked as" not in by_keyword.output + by_class.output


def test_a_domain_promoted_after_start_is_served_when_asked_for(base, tok, registry, five_domains):
    with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_len=64) as engine:
        kv = add_adapter(registry, "finance", 5, 11, prompts=["发票 问题"])
        got = engine.generate(GenerationRequest(query="hello", domain="finance", do_sample=False, max_new_tokens=6))
    assert got.adapter == "finance@v1" and got.route.reason == "explicit"
    assert got.text == oracle(base, tok, "hello", kv, 6)


def test_a_registry_changed_while_serving_routes_and_names_what_answers(base, tok, registry, monkeypatch):
    """Found by a newcomer: after `glmbot adapters archive yoga` (the active version) while serving,
    model "auto" answered every yoga question 404 "model 'auto' does not exist"; after a promotion from
    the CLI the route still said "(active v1)" while v2 answered. A domain promoted again becomes
    routable within REGISTRY_CHECK_S (0 here)."""
    monkeypatch.setattr(routing_setup, "REGISTRY_CHECK_S", 0.0)
    prompts = ["年卡多少钱？", "次卡怎么卖？", "可以停车吗？"]
    v1 = add_adapter(registry, "yoga", 4, 1, prompts=prompts)
    with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_len=64) as engine:
        assert "(active v1)" in engine.generate(greedy("年卡多少钱？", None, 4)).route.detail
        v2 = add_adapter(registry, "yoga", 4, 2, prompts=prompts)  # promoted while serving
        got = engine.generate(greedy("年卡多少钱？", None, 6))
        assert got.adapter == "yoga@v2" and "(active v2)" in got.route.detail
        assert got.text == oracle(base, tok, "年卡多少钱？", v2, 6)
        named = engine.generate(greedy("次卡怎么卖？", "yoga", 4))
        assert named.adapter == "yoga@v2" and "(active v2)" in named.route.detail
        registry.archive("yoga@v2")  # the domain has no active adapter now
        after = engine.generate(greedy("年卡多少钱？", None, 6, conversation_id="c"))
        assert after.route.domain is None and after.adapter is None  # the plain base answers
        assert after.text == oracle(base, tok, "年卡多少钱？", None, 6)
        with pytest.raises(UnknownAdapterError, match="no active adapter"):  # asked for by name: said so
            engine.generate(greedy("年卡多少钱？", "yoga", 4))
        registry.promote("yoga@v1")
        back = engine.generate(greedy("年卡多少钱？", None, 6, conversation_id="c"))
        assert back.adapter == "yoga@v1" and back.text == oracle(base, tok, "年卡多少钱？", v1, 6)


def test_a_request_sent_again_is_routed_again(base, tok, registry, five_domains):
    # The engine writes the route into the request for plugins; sending the object again (a retry,
    # another domain) must not reuse it: only the Ray Serve ingress's routed_upstream requests keep theirs.
    req = greedy(QUERIES[1], "support", 6)
    with Engine(base, tok, registry=registry, max_batch_size=4, max_len=64) as engine:
        assert engine.generate(req).route.domain == "support"
        req.domain = "legal"
        assert engine.generate(req).route.domain == "legal"
        req.domain = "nosuch"
        with pytest.raises(UnknownDomainError, match="nosuch"):
            engine.generate(req)


@pytest.mark.parametrize("setting", ["trained", "all"])
def test_a_prefix_sees_as_many_earlier_rounds_as_it_was_trained_with(base, tok, registry, setting):
    """A conversation's three earlier rounds reach a prefix trained behind one round as that one
    round alone (the latest), under [serving] prefix_history = "trained"; an adapter that does not
    record its rounds (imported), the plain base and the setting "all" get the whole conversation,
    except that small talk alone reaches the plain base without it."""
    kv = {"hr": add_adapter(registry, "hr", 4, 1, hyperparams={"history_rounds": 1}),
          "legal": add_adapter(registry, "legal", 4, 2)}
    history = [("年假有几天？", "十五天。"), ("工资几号发？", "每月十号。"), ("加班怎么算？", "按小时算。")]
    query = QUERIES[1]
    settings = Settings()
    settings.serving.prefix_history = setting
    with Engine(base, tok, registry=registry, settings=settings, max_batch_size=4, max_len=192) as eng:
        results = {d: eng.generate(greedy(query, d, 8, history=history)) for d in ("hr", "legal", "base")}
        hello = eng.generate(greedy("你好", "base", 8, history=history))  # small talk needs no earlier round
    full = tok.build_chat_input(query, history)
    seen = tok.build_chat_input(query, history[-1:]) if setting == "trained" else full
    assert results["hr"].usage.prompt_tokens == len(seen) and len(tok.build_chat_input(query, history[-1:])) < len(full)
    assert results["legal"].usage.prompt_tokens == results["base"].usage.prompt_tokens == len(full)
    assert hello.usage.prompt_tokens == len(tok.build_chat_input("你好", [] if setting == "trained" else history))
    chatty = history + [("你是谁？", "我是智能助手。")]  # small talk rounds are not the round a prefix is shown
    with Engine(base, tok, registry=registry, settings=settings, max_batch_size=4, max_len=256) as eng:
        after_small_talk = eng.generate(greedy(query, "hr", 8, history=chatty))
    assert after_small_talk.usage.prompt_tokens == len(seen if setting == "trained" else tok.build_chat_input(query,
                                                                                                             chatty))
    shown = history[-1:] if setting == "trained" else history
    # A prefix trained behind 3 rounds, in a conversation with only 2 that ask something: both.
    add_adapter(registry, "payroll", 4, 3, hyperparams={"history_rounds": 3})
    thanked = [history[0], ("谢谢", "不客气！"), history[1]]
    with Engine(base, tok, registry=registry, settings=settings, max_batch_size=4, max_len=256) as eng:
        deep = eng.generate(greedy(query, "payroll", 8, history=thanked))
    asking = [history[0], history[1]] if setting == "trained" else thanked
    assert deep.usage.prompt_tokens == len(tok.build_chat_input(query, asking))
    assert results["hr"].text == generate_answers(base, tok, [query], kv["hr"], histories=[shown],
                                                  max_new_tokens=8)[0]


def test_a_routed_prefix_is_not_shown_a_round_of_general_chat_that_went_to_the_base(base, tok, registry):
    """A round the router sent to the plain base (off the domain's topic) between two questions of a
    domain is not the earlier round its prefix sees: the domain's own round is. Asked for by name,
    the domain was answering that round too, so it keeps it."""
    kv = add_adapter(registry, "hr", 4, 1, hyperparams={"history_rounds": 1},
                     prompts=["年假有几天？", "工资几号发？", "加班工资怎么算？", "年假可以顺延吗？"])
    history = [("年假有几天？", "十五天。"), ("帮我写一首关于春天的诗", "春风吹绿了江南。")]
    with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_batch_size=4,
                max_len=192) as eng:
        poem = eng.generate(greedy(history[1][0], None, 4, history=history[:1]))
        routed = eng.generate(greedy("工资几号发？", None, 8, history=history))
        named = eng.generate(greedy("工资几号发？", "hr", 8, history=history))
    assert poem.route.domain is None and "leave_off_topic" in poem.route.detail
    assert routed.route.domain == "hr" and routed.route.reason != "explicit"
    assert routed.usage.prompt_tokens == len(tok.build_chat_input("工资几号发？", history[:1]))
    assert routed.text == generate_answers(base, tok, ["工资几号发？"], kv, histories=[history[:1]],
                                           max_new_tokens=8)[0]
    assert named.usage.prompt_tokens == len(tok.build_chat_input("工资几号发？", history[1:]))
    assert poem.usage.prompt_tokens == len(tok.build_chat_input(history[1][0], history[:1]))  # a real base: all


def test_the_builtin_base_answers_routed_general_chat_alone(base, tok, registry, monkeypatch):
    """The builtin base answers general chat best alone: behind one support round it answered 一年有几个
    季节 with a florist's opening hours, and behind a round of general chat it broke too. Routed general
    chat reaches it without earlier rounds; asked for by name, it is the conversation's model and sees all."""
    add_adapter(registry, "hr", 4, 1, hyperparams={"history_rounds": 1},
                prompts=["年假有几天？", "工资几号发？", "加班工资怎么算？", "年假可以顺延吗？"])
    monkeypatch.setattr(base.config, "name_or_path", "builtin:tiny", raising=False)
    history = [("年假有几天？", "十五天。"), ("帮我写一首关于春天的诗", "春风吹绿了江南。")]
    river = "世界上最长的河流是哪条？"
    with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_batch_size=4,
                max_len=192) as eng:
        poem = eng.generate(greedy(history[1][0], None, 6, history=history[:1]))
        later = eng.generate(greedy(river, None, 6, history=history))
        named = eng.generate(greedy(river, "base", 6, history=history))
    assert poem.route.domain is None and later.route.domain is None and "leave_off_topic" in later.route.detail
    assert poem.usage.prompt_tokens == len(tok.build_chat_input(history[1][0], []))
    assert poem.text == generate_answers(base, tok, [history[1][0]], None, max_new_tokens=6)[0]
    assert later.usage.prompt_tokens == len(tok.build_chat_input(river, []))  # not even the poem round
    assert named.usage.prompt_tokens == len(tok.build_chat_input(river, history))


def test_on_the_builtin_base_a_domains_question_gets_no_earlier_round(base, tok, registry, monkeypatch):
    """Found by a newcomer (piano school, builtin base): behind one earlier question, 10 of 29 training
    questions came back exact; asked alone, 29. On the builtin base a domain's question reaches its
    prefix without the earlier rounds, routed or asked for by name; a short follow-up that leans on them
    ("那病假呢？") keeps the round, as does a prefix whose own data has follow-ups, and a real base."""
    prompts = ["年假有几天？", "工资几号发？", "加班工资怎么算？", "病假工资怎么算？"]
    kv = add_adapter(registry, "hr", 4, 1, hyperparams={"history_rounds": 1}, prompts=prompts)
    history = [("年假有几天？", "十五天。")]
    asked = ["工资几号发？", "加班的工资怎么计算？", "那病假呢？"]

    words_as_asked = settings_from_dict({"serving": {"closest_question": False}})  # 加班的工资 ~ 加班工资: below

    def answered(domain):
        with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_batch_size=4,
                    max_len=192, settings=words_as_asked) as eng:
            return [eng.generate(greedy(q, domain, 6, history=history)) for q in asked]

    real = answered(None)
    monkeypatch.setattr(base.config, "name_or_path", "builtin:tiny", raising=False)
    routed, named = answered(None), answered("hr")
    assert all(r.route.domain == "hr" for r in real + routed + named)
    alone = [len(tok.build_chat_input(q, [])) for q in asked]
    behind = [len(tok.build_chat_input(q, history)) for q in asked]
    assert [r.usage.prompt_tokens for r in real] == behind
    assert [r.usage.prompt_tokens for r in routed] == [r.usage.prompt_tokens for r in named] == alone[:2] + behind[2:]
    assert routed[0].text == generate_answers(base, tok, [asked[0]], kv, max_new_tokens=6)[0]
    add_adapter(registry, "hr", 4, 2, hyperparams={"history_rounds": 1, "data_history_rounds": 1}, prompts=prompts)
    assert [r.usage.prompt_tokens for r in answered(None)] == behind  # its data's own follow-ups


def test_on_the_builtin_base_a_reworded_question_is_asked_as_its_training_question(base, tok, registry, monkeypatch):
    """On the builtin base a prefix gives back its training answers (ROUGE-L 97-100) but rewordings of its
    questions only in part (the tuning domains' paraphrases: 62.0). A question close to one training
    question and to no other is asked as it ([serving] closest_question), and the route's detail says so;
    a training question, a question as close to two, an adapter that did not record its questions, a real
    base, and the setting turned off keep the user's words."""
    prompts = ["年假有几天？", "工资几号发？", "加班工资怎么算？", "病假工资怎么算？", "离职要提前多久说？"]
    kv = add_adapter(registry, "hr", 4, 1, prompts=prompts)
    asked = ["加班的工资怎么计算？", "公司年假一年能休几天？", "工资怎么算？", "年假有几天？"]
    stands_for = ["加班工资怎么算？", "年假有几天？", None, None]

    def answered(settings=None):
        with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_batch_size=4,
                    max_len=192, settings=settings) as eng:
            return [eng.generate(greedy(q, "hr", 6)) for q in asked]

    def as_asked(results):
        return [len(tok.build_chat_input(q, [])) for q in asked] == [r.usage.prompt_tokens for r in results]

    assert as_asked(answered())  # a real base reads rewordings itself
    monkeypatch.setattr(base.config, "name_or_path", "builtin:tiny", raising=False)
    builtin = answered()
    assert [r.usage.prompt_tokens for r in builtin] == [len(tok.build_chat_input(f or q, [])) for f, q in
                                                        zip(stands_for, asked)]
    assert builtin[0].text == generate_answers(base, tok, ["加班工资怎么算？"], kv, max_new_tokens=6)[0]
    assert "asked as its training question '加班工资怎么算？'" in builtin[0].route.detail
    assert "training question" not in builtin[2].route.detail + builtin[3].route.detail
    with Engine(base, tok, registry=registry, max_batch_size=4, max_len=192) as eng:  # a short follow-up
        follow = eng.generate(greedy("那病假呢？", "hr", 6, history=[("加班工资怎么算？", "1.5倍。")]))
    assert follow.usage.prompt_tokens == len(tok.build_chat_input("病假工资怎么算？", []))
    assert "with '加班工资怎么算？' before it" in follow.route.detail
    assert as_asked(answered(settings_from_dict({"serving": {"closest_question": False}})))
    with Engine(base, tok, prefixes={"hr": kv}, questions={"hr": prompts}, max_batch_size=4, max_len=192) as eng:
        in_memory = eng.generate(greedy(asked[0], "hr", 6))  # prefixes held in code, their questions beside them
    assert (in_memory.text, in_memory.usage.prompt_tokens) == (builtin[0].text, builtin[0].usage.prompt_tokens)
    add_adapter(registry, "hr", 4, 2)  # imported, say: no routing_prompts.json
    assert as_asked(answered())
    add_adapter(registry, "hr", 4, 3, prompts=prompts, hyperparams={"data_format": "advertisegen"})
    assert as_asked(answered())  # content/summary rows: things to write about, not questions


def test_an_unknown_domain_says_when_no_glmbot_toml_was_found(base, tok, registry, monkeypatch, tmp_path):
    """Found by a newcomer: ChatGlmbot() run from another folder fell back to the defaults silently, and
    bind(domain="yoga") raised a bare "unknown domain 'yoga'" (the CLI said why; the library did not)."""
    monkeypatch.chdir(tmp_path)
    with Engine(base, tok, registry=registry, router=build_router(Settings(), registry), max_len=64) as engine:
        with pytest.raises(UnknownDomainError, match=f"no glmbot.toml in {tmp_path}.*ChatGlmbot\\(config=...\\)"):
            engine.generate(greedy("年卡多少钱？", "yoga", 4))
        configured = settings_from_dict({}, source=str(tmp_path / "glmbot.toml"))
        engine.settings = configured  # a project's settings: the error alone
        with pytest.raises(UnknownDomainError) as raised:
            engine.generate(greedy("年卡多少钱？", "yoga", 4))
        assert "glmbot.toml" not in str(raised.value)


def test_a_registry_follower_reads_the_registry_at_most_once_an_interval(registry, monkeypatch):
    """The engine and the Ray Serve ingress route through one RegistryFollower: promotions and archivals
    reach the router, but the registry is read at most every REGISTRY_CHECK_S."""
    add_adapter(registry, "yoga", 4, 1, prompts=["年卡多少钱？"])
    router = build_router(Settings(), registry)
    follower = routing_setup.RegistryFollower(router, Settings(), registry)
    monkeypatch.setattr(routing_setup, "REGISTRY_CHECK_S", 60.0)
    follower.follow()  # the first read
    add_adapter(registry, "hr", 4, 2, prompts=["年假有几天？"])
    add_adapter(registry, "yoga", 4, 3, prompts=["年卡多少钱？"])  # yoga@v2 active
    follower.follow()  # within the interval: not read
    assert router.domains == ["yoga"] and router.adapter_version("yoga") == 1
    follower.follow(now=True)
    assert sorted(router.domains) == ["hr", "yoga"] and router.adapter_version("yoga") == 2
    registry.archive("hr@v1")
    follower.follow(now=True)
    assert router.domains == ["yoga"] and router.route("年假有几天？").domain is None
