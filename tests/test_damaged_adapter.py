"""A damaged adapter never ends a conversation silently (issue 18): the hr domain's active version
has its safetensors truncated. Asked for by name, the request fails with one line naming the
adapter, the problem and the fix (CLI: exit code 1); routed, it falls back to the domain's
previous intact version (else the plain base) and says so in the route, the HTTP and LangChain
metadata, the conversation log and the server log. The registry marks the damaged version."""

from __future__ import annotations

import logging

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text

from glmbot import load_base
from glmbot.config import load_settings
from glmbot.errors import AdapterIntegrityError
from glmbot.http import ServerThread, create_app
from glmbot.integrations.langchain import ChatGlmbot
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix import PrefixEncoder
from glmbot.model.prefix_io import encoder_state
from glmbot.registry import Registry
from glmbot.serving.factory import build_engine
from glmbot.serving.requests import GenerationRequest
from tests.cli_helpers import cli, cli_process, make_project

QUESTION = "年假有多少天？"  # routed to hr by its keyword 年假
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def base():
    return load_base("builtin:tiny", device="cpu")


def project(root, base, versions: int = 2):
    """A project whose hr domain (keyword 年假) had `versions` versions promoted in turn; the last one active."""
    config = make_project(root)
    model, _ = base
    with Registry(f"sqlite:///{root / 'adapters' / 'registry.db'}", root / "adapters") as reg:
        reg.add_domain("hr", keywords=["年假"])
        for seed in range(versions):
            torch.manual_seed(seed)
            encoder = PrefixEncoder(model.config, 8)
            with torch.no_grad():
                encoder.embedding.weight.normal_(0, 0.5)  # strong enough that versions answer differently
            info = reg.register_adapter("hr", encoder_state(encoder), base_model="builtin:tiny",
                                        base_fingerprint=base_fingerprint(model), architecture=architecture(model.config))
            reg.promote(info.ref)
    return config


def truncate_weights(config, version: int) -> None:
    path = config.parent / "adapters" / "hr" / f"v{version}" / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def damage_marks(config) -> dict[str, str | None]:
    """The registry's adapters rows, read with plain SQL: {ref: damage}."""
    engine = create_engine(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT d.name, a.version, a.damage, a.damaged_at FROM adapters a "
                                     "JOIN domains d ON d.id = a.domain_id ORDER BY a.version")).all()
    finally:
        engine.dispose()
    assert all((damage is None) == (at is None) for _, _, damage, at in rows)
    return {f"{name}@v{version}": damage for name, version, damage, _ in rows}


def serving(config, base):
    settings = load_settings(config)
    registry = Registry.from_settings(settings)
    model, tok = base
    return settings, registry, build_engine(settings, model, tok, registry, None, max_len=128)


def greedy(**target) -> GenerationRequest:
    return GenerationRequest(query=QUESTION, do_sample=False, max_new_tokens=12, **target)


# ---- the registry ---------------------------------------------------------------------------------

def test_a_failed_load_marks_the_version_and_verify_clears_the_mark_once_restored(tmp_path, base):
    config = project(tmp_path, base)
    path = tmp_path / "adapters" / "hr" / "v2" / WEIGHTS
    intact = path.read_bytes()
    truncate_weights(config, 2)
    with Registry.from_settings(load_settings(config)) as reg:
        with pytest.raises(AdapterIntegrityError) as caught:
            reg.load_prefix_state("hr")
        assert caught.value.ref == "hr@v2" and caught.value.damage == f"{WEIGHTS}: sha256 mismatch"
        assert damage_marks(config) == {"hr@v1": None, "hr@v2": f"{WEIGHTS}: sha256 mismatch"}
        assert reg.resolve("hr").damage == f"{WEIGHTS}: sha256 mismatch"
        assert [a.ref for a in reg.earlier_active("hr")] == ["hr@v1"]
        path.write_bytes(intact)
        assert all(r.ok for r in reg.verify())
        assert damage_marks(config) == {"hr@v1": None, "hr@v2": None}


def test_rollback_to_a_damaged_version_is_refused_and_marks_it(tmp_path, base):
    config = project(tmp_path, base)
    truncate_weights(config, 1)
    with Registry.from_settings(load_settings(config)) as reg:
        with pytest.raises(AdapterIntegrityError, match=r"cannot roll back 'hr' to hr@v1: .*sha256"):
            reg.rollback("hr")
        assert reg.resolve("hr").ref == "hr@v2"  # still the active one
        assert reg.earlier_active("hr") == []
    assert damage_marks(config)["hr@v1"] == f"{WEIGHTS}: sha256 mismatch"


def test_rollback_to_a_restored_version_clears_its_old_mark(tmp_path, base):
    config = project(tmp_path, base)
    path = tmp_path / "adapters" / "hr" / "v1" / WEIGHTS
    intact = path.read_bytes()
    truncate_weights(config, 1)
    with Registry.from_settings(load_settings(config)) as reg:
        with pytest.raises(AdapterIntegrityError):
            reg.rollback("hr")  # marks v1
        path.write_bytes(intact)
        info = reg.rollback("hr")
        assert info.ref == "hr@v1" and info.status == "active" and info.damage is None
    assert damage_marks(config) == {"hr@v1": None, "hr@v2": None}


# ---- the engine, HTTP and LangChain ---------------------------------------------------------------

def test_routed_requests_fall_back_to_the_previous_version_and_say_so_everywhere(tmp_path, base, caplog):
    config = project(tmp_path, base)
    truncate_weights(config, 2)
    settings, registry, engine = serving(config, base)
    with registry, engine:
        expected = engine.generate(greedy(adapter="hr@v1"))
        with caplog.at_level(logging.WARNING, logger="glmbot"):
            first = engine.generate(greedy())
            (tmp_path / "adapters" / "hr" / "v2" / WEIGHTS).unlink()
            again = engine.generate(greedy())  # the mark is read, not the files: still "sha256 mismatch", not "missing"
        with pytest.raises(AdapterIntegrityError) as caught:
            engine.generate(greedy(domain="hr"))  # asked for by name: an error, never another adapter
        metadata = ChatGlmbot(engine=engine, do_sample=False, max_new_tokens=12).invoke(QUESTION).response_metadata
        with ServerThread(create_app(engine, settings=settings, registry=registry)) as server:
            body = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                    "max_tokens": 12}
            reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
            explicit = httpx.post(server.url + "/v1/chat/completions", json={**body, "model": "hr"}, timeout=60)
            remote = ChatGlmbot(base_url=server.url, do_sample=False, max_new_tokens=12).invoke(QUESTION)
    for result in (first, again):
        assert (result.adapter, result.route.reason, result.route.damaged) == ("hr@v1", "damaged_fallback", "hr@v2")
        assert result.token_ids == expected.token_ids and result.text == expected.text
        assert f"hr@v2 is damaged ({WEIGHTS}: sha256 mismatch)" in result.route.detail
        assert "glmbot adapters rollback hr" in result.route.detail
    message = str(caught.value)
    assert "hr@v2" in message and "sha256" in message and "glmbot adapters rollback hr" in message
    assert "glmbot adapters verify hr@v2" in message and "\n" not in message
    warnings = [r.getMessage() for r in caplog.records if "fall back" in r.getMessage()]
    assert len(warnings) == 1 and "hr@v2 is damaged" in warnings[0]
    assert (metadata["adapter"], metadata["route_reason"], metadata["damaged_adapter"]) == \
        ("hr@v1", "damaged_fallback", "hr@v2")
    assert reply["choices"][0]["message"]["content"] == expected.text
    glmbot = reply["glmbot"]
    assert (glmbot["adapter"], glmbot["reason"], glmbot["damaged_adapter"]) == ("hr@v1", "damaged_fallback", "hr@v2")
    assert explicit.status_code == 500 and "hr@v2" in explicit.json()["error"]["message"]
    assert remote.response_metadata == metadata
    with Registry.from_settings(settings) as reg:
        turns = [t for c in reg.list_conversations() for t in reg.conversation_turns(c.id)]
    assert [(t.adapter, t.route_reason) for t in turns] == [("hr@v1", "damaged_fallback")] * 2  # HTTP + remote


def test_without_an_earlier_version_the_plain_base_answers(tmp_path, base):
    config = project(tmp_path, base, versions=1)
    truncate_weights(config, 1)
    _, registry, engine = serving(config, base)
    with registry, engine:
        plain = engine.generate(greedy(domain="base"))
        routed = engine.generate(greedy())
    assert (routed.adapter, routed.route.domain, routed.route.reason) == (None, None, "damaged_fallback")
    assert routed.route.damaged == "hr@v1" and "answered by the plain base model" in routed.route.detail
    assert routed.token_ids == plain.token_ids


# ---- the command line -----------------------------------------------------------------------------

def test_chat_cli_fails_for_the_named_domain_and_falls_back_when_routed(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    config = project(tmp_path, base)
    truncate_weights(config, 2)

    named = cli_process(config, "chat", "--domain", "hr", input=QUESTION + "\n")
    assert named.returncode == 1 and named.stdout == ""
    (line,) = named.stderr.strip().splitlines()
    assert line.startswith("error: adapter hr@v2") and "is damaged" in line and f"{WEIGHTS} has sha256" in line
    assert "glmbot adapters rollback hr" in line and "glmbot adapters verify hr@v2" in line

    routed = cli_process(config, "chat", "--temperature", "0", input=QUESTION + "\n")
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.strip() and "hr@v2 is damaged" in routed.stderr  # the log's warning
    with Registry.from_settings(load_settings(config)) as reg:
        (conversation,) = reg.list_conversations()
        (turn,) = reg.conversation_turns(conversation.id)
    assert (turn.adapter, turn.route_reason, turn.answer) == ("hr@v1", "damaged_fallback", routed.stdout.strip())

    code, out, _ = cli(config, "adapters", "list", capsys=capsys)
    assert code == 0
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.startswith("│ hr")}
    assert "active DAMAGED" in rows["v2"] and "archived" in rows["v1"] and "DAMAGED" not in rows["v1"]
    assert f"DAMAGED hr@v2: {WEIGHTS}: sha256 mismatch" in out and "glmbot adapters rollback hr" in out
