"""Every bad input: one clear error naming the bad value and the fix, and nothing written."""

from __future__ import annotations

import pytest
import torch
from registry_fixtures import (WIDTH, adapters_dir, db_rows, db_url, dir_entries, prefix, register, registry,
                               helper_process, support)

from glmbot.errors import PrefixCheckpointError, RegistryError, UnknownDomainError
from glmbot.model.prefix import V1_PREFIX_WIDTH
from glmbot.model.prefix_io import EMBEDDING_KEY, PREFIX_KEY
from glmbot.registry import Registry

__all__ = ["adapters_dir", "db_url", "registry", "helper_process", "support"]


@pytest.fixture
def unchanged(support: Registry, db_url: str):
    """Asserts after the test that the database rows and the adapters folder did not change."""
    register(support)  # something to keep
    before = (db_rows(db_url), dir_entries(support.adapters_dir))
    yield support
    assert (db_rows(db_url), dir_entries(support.adapters_dir)) == before


@pytest.mark.parametrize("name", ["Support", "../etc", "a/b", "a\\b", "..", ".hidden", "", "sup port", "123",
                                  "-x", "x" * 65, "support\n"])
def test_bad_domain_names(unchanged: Registry, name: str):
    with pytest.raises(RegistryError, match="invalid domain name"):
        unchanged.add_domain(name)
    with pytest.raises(RegistryError, match="invalid domain name"):
        register(unchanged, name, create_domain=True)


def test_a_name_with_capitals_is_offered_in_lowercase(unchanged: Registry):
    with pytest.raises(RegistryError, match="e.g. 'bike'$"):  # a newcomer's --domain Bike
        unchanged.add_domain("Bike")
    with pytest.raises(RegistryError, match="e.g. 'support'$"):  # lowercase does not mend it
        unchanged.add_domain("a/b")


def test_unknown_domain_offers_the_command(unchanged: Registry):
    with pytest.raises(UnknownDomainError, match=r"unknown domain 'sales'; known: support; add it with: "
                                                 r"glmbot domains add sales --data FILE.jsonl"):
        register(unchanged, "sales")
    # A near miss is named first, and the command that would create the typo is offered as a last resort.
    with pytest.raises(UnknownDomainError, match=r"unknown domain 'suport'; did you mean 'support'\? known: support; "
                                                 r"or add a new domain with: glmbot domains add suport"):
        unchanged.list_adapters("suport")
    with pytest.raises(UnknownDomainError, match="glmbot domains add hr"):
        unchanged.list_adapters("hr")


def test_a_domain_with_adapters_or_a_running_training_is_not_removed(registry: Registry):
    registry.add_domain("hr")
    run = registry.start_run("hr")
    with pytest.raises(RegistryError, match=rf"domain 'hr' is being trained \(run {run.id}\); wait for it to end"):
        registry.remove_domain("hr")
    registry.finish_run(run.id, status="failed")
    register(registry, "hr")
    registry.promote("hr@v1")
    with pytest.raises(RegistryError, match=r"still has adapters \(hr@v1\); remove them first with: glmbot adapters rm"):
        registry.remove_domain("hr")
    registry.remove("hr@v1", force=True)
    registry.remove_domain("hr")  # its activations (promote, deactivate) and training runs go with it
    assert registry.list_domains() == [] and registry.list_runs() == []
    with pytest.raises(UnknownDomainError, match="unknown domain 'hr'"):
        registry.remove_domain("hr")


def test_duplicate_domain_and_bad_routing_hints(unchanged: Registry):
    with pytest.raises(RegistryError, match="domain 'support' already exists; see it with: glmbot domains show"):
        unchanged.add_domain("support")
    with pytest.raises(RegistryError, match=r"pattern '\(unclosed' is not a valid regular expression"):
        unchanged.add_domain("sales", patterns=["(unclosed"])
    with pytest.raises(RegistryError, match="keywords must be a list of strings"):
        unchanged.add_domain("sales", keywords="refund")


@pytest.mark.parametrize("state, pattern", [
    (prefix(width=WIDTH + 1), r"prefix width 129 does not fit this base.*trained for a base whose"),
    ({EMBEDDING_KEY: torch.zeros(2, V1_PREFIX_WIDTH)}, "ChatGLM-6B \\(v1\\) prefix"),
    ({EMBEDDING_KEY: torch.full((2, WIDTH), float("nan"))}, "NaN or inf"),
    ({**prefix(), PREFIX_KEY + "extra.weight": torch.zeros(1)}, "unexpected prefix tensors"),
    ({"model.embed.weight": torch.zeros(2, WIDTH)}, "holds no P-Tuning v2 prefix"),
    ({**prefix(), PREFIX_KEY + "trans.0.weight": torch.zeros(64, WIDTH)}, "projection is incomplete"),
    ({EMBEDDING_KEY: torch.zeros(WIDTH)}, r"expected \(P, width\)"),
])
def test_prefix_that_does_not_fit(unchanged: Registry, state, pattern: str):
    with pytest.raises(PrefixCheckpointError, match=pattern):
        register(unchanged, state=state)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"metrics": {"rouge-l": float("nan")}}, "'rouge-l' = nan is not a finite number"),
    ({"metrics": {"rouge-l": "high"}}, "not a finite number"),
    ({"metrics": [1, 2]}, "metrics must be a dict"),
    ({"dataset_sha256": "abc"}, "dataset_sha256 must be 64 lowercase hex"),
    ({"source": "downloaded"}, "source must be one of trained, imported, pulled"),
    ({"sample_count": -1}, "sample_count must be an integer >= 0"),
    ({"routing_prompts": "hello"}, "routing_prompts must be a list of strings"),
    ({"routing_prompts": ["ok", ""]}, "non-empty strings"),
    ({"hyperparams": {"lr": object()}}, "hyperparams must hold only JSON values"),
    ({"provenance": {"x": float("inf")}}, "provenance must hold only JSON values"),
    ({"architecture": {"num_layers": 2}}, "architecture .* lacks"),
    ({"base_fingerprint": ""}, "base_fingerprint must be"),
    ({"base_model": None}, "base_model must name the base"),
])
def test_bad_registration_arguments(unchanged: Registry, kwargs: dict, pattern: str):
    with pytest.raises(RegistryError, match=pattern):
        register(unchanged, **kwargs)


def test_bad_list_and_lifecycle_arguments(unchanged: Registry):
    with pytest.raises(RegistryError, match="unknown status 'live'; use one of candidate, active, archived"):
        unchanged.list_adapters(status="live")
    with pytest.raises(RegistryError, match="no active adapter to roll back from"):
        unchanged.rollback("support")
    with pytest.raises(RegistryError, match="an evaluation needs at least one metric"):
        unchanged.add_evaluation("support@v1", {}, None)
    with pytest.raises(RegistryError, match="no training run with id 77"):
        unchanged.finish_run(77)
