"""The conversation log on SQLite and PostgreSQL: turns in order, listing, export, bad input."""

from __future__ import annotations

import io
import json

import pytest
from registry_fixtures import adapters_dir, db_url, registry  # noqa: F401 - fixtures

from glmbot.errors import RegistryError


def test_turns_are_logged_listed_and_exported(registry):  # noqa: F811
    registry.log_turn("c1", source="cli", query="退货多久到账？", answer="1-3个工作日。", domain="support",
                      adapter="support@v1", route_reason="classifier", route_score=0.8, prompt_tokens=12,
                      completion_tokens=9, latency_s=0.5, first_token_s=0.1)
    registry.log_turn("c1", source="cli", query="谢谢", answer="不客气", route_reason="fallback", prompt_tokens=30,
                      completion_tokens=4, latency_s=0.2)
    registry.log_turn("c2", source="http", query="你好", answer="您好", prompt_tokens=5, completion_tokens=3,
                      finish_reason="length", latency_s=0.1)
    listed = {c.id: c for c in registry.list_conversations()}
    assert (listed["c1"].turns, listed["c1"].source, listed["c1"].title) == (2, "cli", "退货多久到账？")
    assert listed["c2"].turns == 1 and listed["c2"].source == "http"
    turns = registry.conversation_turns("c1")
    assert [(t.query, t.adapter, t.route_reason) for t in turns] == [
        ("退货多久到账？", "support@v1", "classifier"), ("谢谢", None, "fallback")]
    out = io.StringIO()
    assert registry.export_conversations(out, "c1") == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["answer"] == "1-3个工作日。" and lines[0]["prompt_tokens"] == 12
    out = io.StringIO()
    assert registry.export_conversations(out) == 3


def test_bad_conversation_input_writes_nothing(registry):  # noqa: F811
    with pytest.raises(RegistryError, match="source 'sms'"):
        registry.log_turn("c1", source="sms", query="q", answer="a")
    with pytest.raises(RegistryError, match="1-64 characters"):
        registry.log_turn("x" * 65, source="cli", query="q", answer="a")
    with pytest.raises(RegistryError, match="no conversation 'nope'"):
        registry.conversation_turns("nope")
    assert registry.list_conversations() == []


def test_a_conversation_is_found_by_the_start_of_its_id(registry):  # noqa: F811
    """Found by a newcomer: `glmbot logs show b5305c` (the start of a 32-character id, as the command's own
    example shows) answered "no conversation"."""
    for cid, query in (("3f2a9c0e11", "你好"), ("3f2b0000", "再见"), ("a_b", "x"), ("axb", "y")):
        registry.log_turn(cid, source="cli", query=query, answer="嗯", route_reason="fallback", prompt_tokens=1,
                          completion_tokens=1)
    assert [t.query for t in registry.conversation_turns("3f2a")] == ["你好"]
    assert [t.query for t in registry.conversation_turns("3f2b0000")] == ["再见"]
    with pytest.raises(RegistryError, match="'3f2' starts several conversations .*give more of its id"):
        registry.conversation_turns("3f2")
    with pytest.raises(RegistryError, match="no conversation 'zz'; list them with: glmbot logs list"):
        registry.conversation_turns("zz")
    assert [t.query for t in registry.conversation_turns("a_")] == ["x"]  # '_' is a character, not a wildcard
    out = io.StringIO()
    assert registry.export_conversations(out, "3f2b") == 1 and json.loads(out.getvalue())["query"] == "再见"
