"""Import of official P-Tuning v2 checkpoints and glmbot folders; export -> import round trip."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from registry_fixtures import (CONFIG, FINGERPRINT, WIDTH, adapter_states, adapters_dir, db_rows, db_url, file_tree,
                               helper_process, official_checkpoint, prefix, register, registry, support,
                               tiny_config)

from glmbot.errors import AdapterIntegrityError, PrefixCheckpointError, UnknownDomainError
from glmbot.model.prefix import V1_PREFIX_WIDTH
from glmbot.model.prefix_io import EMBEDDING_KEY
from glmbot.registry import Registry

__all__ = ["adapters_dir", "db_url", "registry", "helper_process", "support"]


def do_import(registry: Registry, path, domain: str = "support", **kwargs):
    kwargs.setdefault("config", CONFIG)
    return registry.import_path(path, domain, base_model="builtin:tiny", base_fingerprint=FINGERPRINT, **kwargs)


def test_official_checkpoint_import(support: Registry, tmp_path):
    state = prefix(p=8, seed=3)
    folder = official_checkpoint(tmp_path, state, pre_seq_len=8)
    info = do_import(support, folder)
    assert (info.ref, info.source, info.pre_seq_len, info.prefix_projection) == ("support@v1", "imported", 8, False)
    assert info.provenance["format"] == "official-checkpoint" and info.provenance["step"] == 3000
    assert info.provenance["file_sha256"] == hashlib.sha256((folder / "pytorch_model.bin").read_bytes()).hexdigest()
    loaded, _ = support.load_prefix_state("support@v1")
    assert torch.equal(loaded[EMBEDDING_KEY], state[EMBEDDING_KEY])


def test_official_checkpoint_with_projection(support: Registry, tmp_path):
    state = prefix(p=4, seed=5, projection=True, hidden=CONFIG.hidden_size)
    info = do_import(support, official_checkpoint(tmp_path, state, pre_seq_len=4, projection=True))
    assert info.prefix_projection
    loaded, _ = support.load_prefix_state(info.id)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("width, pattern", [
    (V1_PREFIX_WIDTH, r"ChatGLM-6B \(v1\) prefix"),
    (28 * 2 * 2 * 128, r"does not fit this base.*trained for ChatGLM2-6B"),
    (WIDTH * 2, r"does not fit this base.*width 256"),
])
def test_prefix_of_another_base_is_refused(support: Registry, db_url: str, tmp_path, width: int, pattern: str):
    folder = official_checkpoint(tmp_path, {EMBEDDING_KEY: torch.zeros(2, width)}, pre_seq_len=2)
    before, files = db_rows(db_url), file_tree(support.adapters_dir)
    with pytest.raises(PrefixCheckpointError, match=pattern):
        do_import(support, folder)
    assert db_rows(db_url) == before and file_tree(support.adapters_dir) == files


def test_config_json_disagreeing_with_weights_is_refused(support: Registry, db_url: str, tmp_path):
    folder = official_checkpoint(tmp_path, prefix(p=4), pre_seq_len=128)
    with pytest.raises(PrefixCheckpointError, match="pre_seq_len=4.*config says pre_seq_len=128"):
        do_import(support, folder)
    assert adapter_states(db_url) == []


@pytest.mark.parametrize("make", ["missing", "empty", "not-weights"])
def test_path_that_is_not_a_checkpoint(support: Registry, db_url: str, tmp_path, make: str):
    path = tmp_path / "thing"
    if make == "empty":
        path.mkdir()
    elif make == "not-weights":
        path.mkdir()
        (path / "pytorch_model.bin").write_bytes(b"this is not a pickle")
    before, files = db_rows(db_url), file_tree(support.adapters_dir)
    with pytest.raises(PrefixCheckpointError, match="does not exist|is not a prefix checkpoint|not a readable"):
        do_import(support, path)
    assert db_rows(db_url) == before and file_tree(support.adapters_dir) == files


def test_unknown_domain_is_refused_before_reading(support: Registry, db_url: str, tmp_path):
    folder = official_checkpoint(tmp_path, prefix(), pre_seq_len=4)
    with pytest.raises(UnknownDomainError, match="glmbot domains add sales"):
        do_import(support, folder, domain="sales")
    assert db_rows(db_url)["adapters"] == []
    info = do_import(support, folder, domain="sales", create_domain=True)
    assert info.ref == "sales@v1"


def test_export_import_round_trip_keeps_the_weights_hash(support: Registry, tmp_path):
    original = register(support, metrics={"rouge-l": 40.0}, hyperparams={"lr": 0.01}, sample_count=7,
                        dataset_sha256="c" * 64, routing_prompts=["refund"])
    dest = support.export("support@v1", tmp_path / "exported")
    assert sorted(p.name for p in dest.iterdir()) == sorted(original.files)
    assert "# support v1" in (dest / "README.md").read_text()
    back = do_import(support, dest)
    assert back.ref == "support@v2"
    weights = "adapter_model.safetensors"
    assert back.files[weights] == original.files[weights]
    assert hashlib.sha256((back.path / weights).read_bytes()).hexdigest() == original.files[weights]
    assert (back.metrics, back.hyperparams, back.sample_count, back.dataset_sha256) == (
        {"rouge-l": 40.0}, {"lr": 0.01}, 7, "c" * 64)
    assert json.loads((back.path / "routing_prompts.json").read_text()) == ["refund"]
    assert back.provenance["original"]["version"] == 1 and back.provenance["format"] == "glmbot-adapter"


def test_export_refuses_a_used_destination(support: Registry, tmp_path):
    register(support)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="already exists and is not an empty folder"):
        support.export("support@v1", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


def test_glmbot_folder_checks(support: Registry, db_url: str, tmp_path):
    register(support)
    dest = support.export("support@v1", tmp_path / "exported")
    other = tiny_config(num_layers=3)
    with pytest.raises(PrefixCheckpointError, match="trained for base 'builtin:tiny'"):
        do_import(support, dest, config=other)  # shapes do not fit: says which base it was for
    with pytest.raises(PrefixCheckpointError, match="fingerprint .*--allow-base-mismatch"):
        support.import_path(dest, "support", config=CONFIG, base_model="other", base_fingerprint="sha256:ffff")
    assert adapter_states(db_url) == [("support", 1, "candidate")]
    forced = support.import_path(dest, "support", config=CONFIG, base_model="other", base_fingerprint="sha256:ffff",
                                 allow_base_mismatch=True)
    assert (forced.version, forced.base_fingerprint) == (2, "sha256:ffff")
    assert forced.provenance["original"]["base_fingerprint"] == FINGERPRINT
    before = db_rows(db_url)
    weights = dest / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match="the copy is damaged"):
        do_import(support, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "LORA"}))
    with pytest.raises(PrefixCheckpointError, match="peft_type 'LORA'"):
        do_import(support, dest)
    assert db_rows(db_url) == before
