"""The plugins in plugins/ end to end through `glmbot chat`, and every hook from its real call site."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmbot import hookspecs, load_base
from glmbot.config import load_settings
from glmbot.plugins import get_manager
from glmbot.registry import Registry
from glmbot.serving.factory import build_engine
from glmbot.serving.requests import GenerationRequest
from tests.cli_helpers import cli_process, project_with_adapters

REPO_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    extra = f"""
[plugins]
paths = ["{REPO_PLUGINS}"]
sensitive_words = ["智能助手"]
[plugins.options.order_status]
db = "orders.db"
"""
    return project_with_adapters(root, extra)


def logged_turns(config):
    with Registry(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}", config.parent / "adapters") as reg:
        return [t for c in reg.list_conversations() for t in reg.conversation_turns(c.id)]


def test_order_status_tool_answers_from_sqlite_without_the_model(project):
    done = cli_process(project, "chat", "--temperature", "0", input="订单 12345 到哪了？\n订单 99999 到哪了？\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["订单 12345：运输中，已到达上海转运中心（顺丰），最后更新于 2026-11-27 18:20。",
                                        "没有查到订单 99999，请核对订单号，或输入“转人工”联系客服。"]
    assert (project.parent / "orders.db").is_file()
    turns = [t for t in logged_turns(project) if t.query.startswith("订单 12345")]
    assert turns and turns[0].completion_tokens == 0  # the model was never asked


def test_sensitive_words_are_masked_in_answers(project):
    plain = cli_process(project, "chat", "--domain", "base", "--temperature", "0", "--no-log", input="你好\n",
                        env_extra={"GLMBOT_LOAD_PLUGINS": "order_status"})
    masked = cli_process(project, "chat", "--domain", "base", "--temperature", "0", "--no-log", input="你好\n")
    assert "智能助手" in plain.stdout and "智能助手" not in masked.stdout  # the builtin base greets as 智能助手
    assert masked.stdout == plain.stdout.replace("智能助手", "****")


def test_keyword_router_plugin_routes_before_the_rules(project):
    done = cli_process(project, "chat", "--temperature", "0", input="我想开发票\n")
    assert done.returncode == 0, done.stderr
    (turn,) = [t for t in logged_turns(project) if t.query == "我想开发票"]
    assert (turn.adapter, turn.route_reason) == ("support@v1", "plugin")


def test_hooks_get_the_documented_arguments_from_the_engine_and_router(project):
    calls = []

    class Recorder:
        @hookspecs.hookimpl
        def register_routers(self, register):
            calls.append(("register_routers", register))

        @hookspecs.hookimpl
        def before_generate(self, request):
            calls.append(("before_generate", request.route.domain, request.messages[-1]["content"]))
            request.messages[-1]["content"] = "退货多久到账？"  # plugins may edit the question

        @hookspecs.hookimpl
        def after_generate(self, request, response):
            calls.append(("after_generate", request.route.domain, response))
            return response + "【已审核】"

    settings = load_settings(project)
    manager = get_manager(settings, entry_points=False)
    manager.register(Recorder(), "recorder")
    model, tok = load_base("builtin:tiny", device="cpu")
    with Registry(settings.db_url, settings.adapters_dir) as reg:
        with build_engine(settings, model, tok, reg, manager, max_len=256) as engine:
            edited = engine.generate(GenerationRequest(messages=[{"role": "user", "content": "我想咨询一下"}], domain="support",
                                                       do_sample=False, max_new_tokens=24))
        with build_engine(settings, model, tok, reg, None, max_len=256) as engine:
            direct = engine.generate(GenerationRequest(query="退货多久到账？", domain="support", do_sample=False,
                                                       max_new_tokens=24))
    assert calls[0][0] == "register_routers" and callable(calls[0][1])
    assert calls[1] == ("before_generate", "support", "我想咨询一下")
    assert calls[2] == ("after_generate", "support", direct.text)
    assert edited.text == direct.text + "【已审核】"
