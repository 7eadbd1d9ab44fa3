"""`glmbot chat` driven as a user would: a pseudo-terminal, pipes, and the conversation log."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from glmbot import load_base
from glmbot.registry import Registry
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest
from tests.cli_helpers import cli_process, project_with_adapters


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return project_with_adapters(tmp_path_factory.mktemp("chat"))


def registry_of(config):
    return Registry(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}", config.parent / "adapters")


def engine_answer(config, query, domain, history=()):
    model, tok = load_base("builtin:tiny", device="cpu")
    with registry_of(config) as reg, Engine(model, tok, registry=reg) as engine:
        return engine.generate(GenerationRequest(query=query, history=history, domain=domain, do_sample=False,
                                                 max_new_tokens=256)).text


def test_piped_mode_prints_exactly_the_answer(project):
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0", input="退货多久到账？\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == engine_answer(project, "退货多久到账？", "support") + "\n"


def test_small_talk_in_a_pinned_chat_is_answered_by_the_plain_base(project):
    """`glmbot chat --domain support`: "谢谢" alone goes to the plain base (a prefix trained on the
    domain's questions garbles it), the next question to the pinned domain again."""
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0", input="谢谢\n退货多久到账？\n")
    assert done.returncode == 0, done.stderr
    thanks, refund = done.stdout.splitlines()
    assert thanks == engine_answer(project, "谢谢", "base")
    assert refund == engine_answer(project, "退货多久到账？", "support", history=[("谢谢", thanks)])
    with registry_of(project) as reg:
        turns = [t for c in reg.list_conversations() for t in reg.conversation_turns(c.id)]
    logged = [(t.query, t.adapter, t.route_reason) for t in turns if t.query in ("谢谢", "退货多久到账？")]
    assert ("谢谢", None, "small_talk") in logged and ("退货多久到账？", "support@v1", "explicit") in logged


def test_closed_stdin_empty_lines_and_unknown_domain(project):
    done = cli_process(project, "chat", input="")
    assert done.returncode == 0 and done.stdout == ""
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0", input="\n   \n")
    assert done.returncode == 0 and done.stdout == ""
    done = cli_process(project, "chat", "--domain", "hr", input="你好\n")
    assert done.returncode == 1 and "unknown domain 'hr'" in done.stderr and "base, ads, support" in done.stderr
    assert "glmbot domains add hr --data" in done.stderr


def test_unknown_command_prints_help_and_long_input_is_cut(project):
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0",
                       input="/frobnicate\n" + "退货" * 200 + "\n")
    assert done.returncode == 0
    assert "unknown command /frobnicate" in done.stderr and "/domain NAME" in done.stdout
    assert "kept the first 64" in done.stderr


def test_unwritable_database_keeps_chatting_with_a_warning(project, tmp_path):
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0", input="你好\n",
                       env_extra={"GLMBOT_DB_URL": f"sqlite:///file:{project.parent / 'adapters' / 'registry.db'}?mode=ro&uri=true"})
    assert done.returncode == 0, done.stderr
    assert "conversation logging is off" in done.stderr and done.stdout.strip()


def test_terminal_conversation_with_a_domain_switch_is_logged(project):
    env = {**os.environ, "GLMBOT_CONFIG": str(project), "COLUMNS": "120", "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "glmbot", "chat", "--temperature", "0"], env=env,
                          cwd=str(project.parent), encoding="utf-8", timeout=60, dimensions=(40, 120))
    child.expect("你 > ")
    child.sendline("退货多久到账？")
    child.expect("support@v1")  # the status line under the answer: routed by the classifier
    child.expect("你 > ")
    child.sendline("/domain ads")
    child.expect("answering with ads")
    child.sendline("类型#裙*颜色#白色")
    child.expect("ads@v1 · explicit")
    child.expect("你 > ")
    child.sendline("谢谢")  # small talk under a named domain: its status line names the setting, brackets kept
    child.expect_exact("small_talk · 1.00 · small talk alone under domain 'ads'")
    child.expect_exact("([routing] small_talk_to_base;")  # rich markup would eat "[routing]"
    child.expect("你 > ")
    child.sendline("/history")
    child.expect("3. 问")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    with registry_of(project) as reg:
        conv = next(c for c in reg.list_conversations() if c.title == "退货多久到账？")
        turns = reg.conversation_turns(conv.id)
    assert [(t.adapter, t.route_reason) for t in turns] == [("support@v1", "classifier"), ("ads@v1", "explicit"),
                                                            (None, "small_talk")]
    assert all(t.completion_tokens > 0 and t.answer for t in turns)


def test_no_history_asks_every_piped_line_on_its_own(project):
    """Found by a newcomer: 28 training questions piped into one chat came back 22 right, each behind
    all the earlier rounds; --no-history answers each as a conversation of its own."""
    questions = ["退货多久到账？", "什么时候发货？", "发票怎么开？"]
    done = cli_process(project, "chat", "--domain", "support", "--temperature", "0", "--no-history",
                       input="\n".join(questions) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [engine_answer(project, q, "support") for q in questions]
    with registry_of(project) as reg:  # asked only here: each the one turn of its own logged conversation
        logged = [[t.query for t in reg.conversation_turns(c.id)] for c in reg.list_conversations()]
    assert sorted(turns for turns in logged if set(turns) & set(questions[1:])) == [["什么时候发货？"], ["发票怎么开？"]]


def test_adapters_command_lists_each_domains_active_adapter(project):
    """/adapters shows what answers each domain (ref, metrics, age) and what the chat answers with now."""
    done = cli_process(project, "chat", "--domain", "support", input="/adapters\n", env_extra={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    with registry_of(project) as reg:
        active = {a.domain: a for a in reg.list_adapters(status="active")}
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") >= 4}
    assert set(active) <= set(rows) and "base" in rows
    for domain, adapter in active.items():
        assert adapter.ref in rows[domain] and " ago" in rows[domain]
    assert "answering with: domain support" in done.stdout


def test_fallback_reply_answers_what_no_domain_holds_instead_of_the_plain_base(tmp_path):
    """A newcomer's 你们店地址在哪？ reached no domain and the plain base made up an address; with
    [routing] fallback_reply set, such a message gets that fixed answer, while small talk still gets
    the plain base and a domain's question its prefix."""
    from glmbot.stack import engine_from_config

    reply = "抱歉，这个问题我还答不上来，请联系工作人员。"
    config = project_with_adapters(tmp_path, f'\n[routing]\nfallback_reply = "{reply}"\n')
    plain = project_with_adapters(tmp_path / "plain")

    def ask(cfg, query, **kw):
        with engine_from_config(cfg) as engine:
            return engine.generate(GenerationRequest(query=query, do_sample=False, max_new_tokens=32, **kw))

    unheld = ask(config, "量子力学难不难学？")
    assert unheld.text == reply and unheld.route.domain is None and unheld.route.reason == "fallback"
    assert "[routing] fallback_reply" in unheld.route.detail
    assert ask(plain, "量子力学难不难学？").text != reply  # unset: the plain base answers
    for query, kw in (("你好", {}), ("退货多久到账？", {}), ("量子力学难不难学？", {"domain": "base"})):
        with_reply, without = ask(config, query, **kw), ask(plain, query, **kw)
        assert with_reply.text == without.text != reply and with_reply.route.reason == without.route.reason


def test_a_sticky_route_says_so_in_a_few_words_under_each_answer():
    """The status line under an answer in a conversation that stays with its domain no longer retells the
    first message's whole reason (repeated under every answer, it buried them); other routes keep theirs."""
    from dataclasses import replace

    from glmbot.chat import route_line
    from glmbot.serving.requests import GenerationResult, Timings, Usage
    from glmbot.serving.router import RouteDecision

    def result(route: RouteDecision) -> GenerationResult:
        return GenerationResult("答", "stop", Usage(3, 2), route, "bike@v1", 1, Timings(0.0, 0.1, 0.2))

    first = RouteDecision("bike", "bike@v1", "classifier", 1.0, detail="one of bike's training prompts, word for word")
    sticky = RouteDecision("bike", "bike@v1", "sticky", 1.0, detail="the conversation stays with bike, where an earlier "
                           "message went by classifier (that message: one of bike's training prompts, word for word)")
    assert route_line(result(first)) == "bike@v1 · classifier · 1.00 · one of bike's training prompts, word for word"
    assert route_line(result(sticky)) == "bike@v1 · sticky · 1.00 · kept from earlier in the conversation"
    asked = replace(sticky, detail=sticky.detail + "; asked as its training question '可以换货吗？', with '退货多久到账？' "
                                                   "before it ([serving] closest_question)")
    assert route_line(result(asked)) == ("bike@v1 · sticky · 1.00 · kept from earlier in the conversation; asked as its "
                                         "training question '可以换货吗？', with '退货多久到账？' before it ([serving] "
                                         "closest_question)")
