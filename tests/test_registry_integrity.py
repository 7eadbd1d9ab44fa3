"""Stored files are checked against their recorded sha256: a flipped byte is found and refused."""

from __future__ import annotations

import hashlib

import pytest
from registry_fixtures import (activation_log, adapter_states, adapters_dir, db_url, register, registry,
                               helper_process, support)

from glmbot.errors import AdapterIntegrityError
from glmbot.registry import Registry

__all__ = ["adapters_dir", "db_url", "registry", "helper_process", "support"]


def flip_last_byte(path) -> str:
    """Flip the last byte of a file (tensor data, so the file still parses); returns its new sha256."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()


def test_flipped_byte_is_found_by_verify_and_refused_at_load(support: Registry):
    good, bad = register(support, seed=1), register(support, seed=2)
    weights = bad.path / "adapter_model.safetensors"
    recorded = bad.files["adapter_model.safetensors"]
    actual = flip_last_byte(weights)

    results = {r.adapter.ref: r for r in support.verify()}
    assert results["support@v1"].ok
    assert not results["support@v2"].ok
    (problem,) = results["support@v2"].problems
    assert (problem.name, problem.expected, problem.actual) == ("adapter_model.safetensors", recorded, actual)
    assert [r.ok for r in support.verify("support@v2")] == [False]

    with pytest.raises(AdapterIntegrityError) as caught:
        support.load_prefix_state("support@v2")
    message = str(caught.value)
    assert "support@v2" in message and "adapter_model.safetensors" in message
    assert recorded in message and actual in message and "glmbot adapters rm support@v2" in message
    state, info = support.load_prefix_state("support@v1")  # the intact one still loads
    assert info.id == good.id and state


def test_damaged_adapter_is_never_promoted_or_exported(support: Registry, db_url: str, tmp_path):
    info = register(support)
    (info.path / "README.md").write_text("edited by hand\n")
    with pytest.raises(AdapterIntegrityError, match="README.md has sha256"):
        support.promote("support@v1")
    assert adapter_states(db_url) == [("support", 1, "candidate")] and activation_log(db_url) == []
    with pytest.raises(AdapterIntegrityError, match="README.md"):
        support.export("support@v1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_file_is_reported(support: Registry):
    info = register(support, routing_prompts=["hello"])
    (info.path / "routing_prompts.json").unlink()
    (result,) = support.verify("support@v1")
    assert [(p.name, p.actual) for p in result.problems] == [("routing_prompts.json", None)]
    with pytest.raises(AdapterIntegrityError, match="routing_prompts.json is missing"):
        support.load_prefix_state("support@v1")
