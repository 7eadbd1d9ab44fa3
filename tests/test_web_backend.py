"""What the web pages show and do, checked without a browser (WebBackend over the registry and engine)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from test_web_ui import LOSSES, engine, registry  # noqa: F401

from glmbot.errors import GlmbotError
from glmbot.http.web import build_blocks
from glmbot.http.web.backend import VERSION_COLUMNS, WebBackend, supports_system_role
from glmbot.serving.requests import GenerationRequest


@pytest.fixture
def backend(engine, registry):
    return WebBackend(engine, registry, engine.settings)


def test_the_picker_offers_auto_base_each_domain_and_each_unarchived_version(backend, registry):
    values = [value for _, value in backend.targets()]
    assert values == ["auto", "base", "ads", "support", "ads@v1", "support@v1", "support@v2"]
    assert ("support (active v1)", "support") in backend.targets()
    state, v2 = registry.load_prefix_state("support@v2")
    v3 = registry.register_adapter("support", state, base_model=v2.base_model, base_fingerprint=v2.base_fingerprint,
                                   architecture=v2.architecture)
    assert v3.ref in [value for _, value in backend.targets()]
    registry.archive(v3.ref)
    assert v3.ref not in [value for _, value in backend.targets()]
    registry.remove(v3.ref)


def test_versions_rows_carry_status_metrics_and_weights_hash(backend, registry):
    rows = {row[0]: dict(zip(VERSION_COLUMNS, row)) for row in backend.versions("support")}
    assert list(rows) == ["support@v2", "support@v1"]
    v2 = registry.resolve("support@v2")
    assert rows["support@v2"]["rouge-l"] == 41.5 and rows["support@v2"]["general chat kept"] == "88%"
    assert rows["support@v2"]["weights sha256"] == v2.files["adapter_model.safetensors"][:16]
    assert rows["support@v1"]["status"] == "active" and rows["support@v1"]["rouge-l"] is None
    state, _ = registry.load_prefix_state("support@v2")  # no dev data: the training questions' score, in words
    plain = registry.register_adapter("support", state, base_model=v2.base_model, base_fingerprint=v2.base_fingerprint,
                                      architecture=v2.architecture, metrics={"train_rouge-l": 100.0, "learned": 1.0})
    row = dict(zip(VERSION_COLUMNS, backend.versions("support")[0]))
    assert (row["version"], row["train_rouge-l"], row["learned"], row["rouge-l"]) == (plain.ref, 100.0, "yes", None)
    registry.remove(plain.ref)


def test_the_loss_curve_is_the_runs_and_absent_without_a_run(backend):
    assert [loss for _, loss in backend.loss_curve("support@v2")] == LOSSES
    assert [step for step, _ in backend.loss_curve("support@v2")] == [1, 2, 3, 4]
    assert backend.loss_curve("ads@v1") == []


def test_actions_ask_first_then_go_through_the_registry(backend, registry):
    assert backend.action_question("promote", "ads@v1").startswith("Promote ads@v1? It replaces ads@v1")
    assert "ads will have none" in backend.action_question("archive", "ads@v1")
    state, v2 = registry.load_prefix_state("support@v2")  # a version whose training learned nothing: said so
    weak = registry.register_adapter("support", state, base_model=v2.base_model, base_fingerprint=v2.base_fingerprint,
                                     architecture=v2.architecture, metrics={"learned": 0.0})
    assert f"Careful: {weak.ref} learned nothing in training" in backend.action_question("promote", weak.ref)
    assert "Careful" not in backend.action_question("promote", "support@v2")
    registry.remove(weak.ref)
    with pytest.raises(GlmbotError, match="no earlier active version"):
        backend.act("rollback", "ads@v1")  # refused, with the registry's message shown on the page
    with pytest.raises(GlmbotError, match="unknown action 'delete'"):
        backend.act("delete", "ads@v1")
    assert registry.resolve("ads").version == 1


def test_a_streamed_reply_grows_and_ends_with_its_route(backend, engine):
    async def collect():
        return [r async for r in backend.stream_reply("你好", [], "support@v1", conversation_id="web-test")]

    replies = asyncio.run(collect())
    assert all(b.text.startswith(a.text) for a, b in zip(replies, replies[1:]))
    final = replies[-1].result
    assert final is not None and final.adapter == "support@v1"
    assert final.text == engine.generate(GenerationRequest(query="你好", adapter="support@v1")).text


def test_the_system_prompt_field_follows_the_base_familys_flag(backend, engine):
    assert supports_system_role(engine) is False  # ChatGLM2's builtin base: no system turn
    native = SimpleNamespace(tokenizer=SimpleNamespace(family=SimpleNamespace(native_system=True)))
    assert supports_system_role(native) is True

    def system_field_visible(web_backend) -> bool:
        config = build_blocks(web_backend).get_config_file()
        (field,) = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "chat-system"]
        return field["props"]["visible"]

    assert system_field_visible(backend) is False
    family = SimpleNamespace(native_system=True)
    with_system = SimpleNamespace(tokenizer=SimpleNamespace(family=family))
    assert system_field_visible(WebBackend(with_system, backend.registry, backend.settings)) is True
