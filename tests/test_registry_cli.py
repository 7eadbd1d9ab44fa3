"""`glmbot adapters ...` and `glmbot domains ...` through Typer's CliRunner (SQLite: the CLI only calls the library)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import typer
from registry_fixtures import CONFIG, helper_process, official_checkpoint, register
from rich.console import Console
from typer.testing import CliRunner

from glmbot.config import Settings, load_settings
from glmbot.errors import UnknownAdapterError, UnknownDomainError
from glmbot.model.fingerprint import base_fingerprint
from glmbot.model.modeling import ChatGLMForConditionalGeneration
from glmbot.registry import Registry

__all__ = ["helper_process"]

try:
    from glmbot.cli import common
except ImportError:  # the lead's glmbot/cli/common.py is not there yet: the same contract, as a stand-in
    common = types.ModuleType("glmbot.cli.common")
    common.console, common.err_console = Console(), Console(stderr=True)
    common.get_settings = common.get_registry = common.load_base_model = None
    sys.modules["glmbot.cli.common"] = common

from glmbot.cli import adapters, domains  # noqa: E402 - after the stand-in

app = typer.Typer()
app.add_typer(adapters.app, name="adapters")
app.add_typer(domains.app, name="domains")


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return ChatGLMForConditionalGeneration(CONFIG).eval()


@pytest.fixture
def cli(tmp_path, monkeypatch, base_model):
    """Run `glmbot <args>` against a fresh SQLite registry; returns (run, registry)."""
    registry = Registry(f"sqlite:///{tmp_path / 'adapters' / 'registry.db'}", tmp_path / "adapters")
    monkeypatch.setattr(common, "get_registry", lambda: registry)
    monkeypatch.chdir(tmp_path)  # `domains add` writes ./glmbot.toml when no config file is in use
    config = tmp_path / "glmbot.toml"
    monkeypatch.setattr(common, "get_settings", lambda: load_settings(config) if config.exists() else Settings())
    monkeypatch.setattr(common, "load_base_model", lambda: (base_model, None))
    monkeypatch.setattr(common, "console", Console(width=250, force_terminal=False))
    monkeypatch.setattr(common, "err_console", Console(width=250, force_terminal=False, stderr=True))
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    yield run, registry
    registry.close()


def test_domains_commands(cli):
    run, registry = cli
    assert "No domains yet" in run("domains", "list").output
    result = run("domains", "add", "support", "-d", "customer support", "-k", "refund", "-k", "order", "-p", r"#\d+")
    assert result.exit_code == 0 and "Added domain support" in result.output
    assert registry.get_domain("support").description == "customer support"
    table = load_settings(registry.adapters_dir.parent / "glmbot.toml").domains["support"]
    assert table.keywords == ["refund", "order"] and table.patterns == [r"#\d+"]
    listing = run("domains", "list").output
    assert "support" in listing and "customer support" in listing and "refund, order" in listing
    register(registry)
    shown = run("domains", "show", "support").output
    assert "active: none" in shown and "v1" in shown and "candidate" in shown
    result = run("domains", "show", "sales")
    assert result.exit_code == 1 and isinstance(result.exception, UnknownDomainError)


def test_adapter_lifecycle_commands(cli):
    run, registry = cli
    assert "No adapters registered yet" in run("adapters", "list").output
    registry.add_domain("support")
    register(registry, seed=1, metrics={"rouge-l": 41.25})
    register(registry, seed=2)
    listing = run("adapters", "list").output
    assert "support" in listing and "v1" in listing and "v2" in listing and "rouge-l 41.25" in listing
    assert "candidate" in listing and " 4 " in listing  # P

    assert "support@v1 is now the active adapter of support" in run("adapters", "promote", "support@v1").output
    assert "support@v2 is now the active adapter" in run("adapters", "promote", "support@v2").output
    assert "support@v1 is active again" in run("adapters", "rollback", "support").output
    assert [(a.version, a.status) for a in registry.list_adapters()] == [(1, "active"), (2, "archived")]
    assert "active" in run("adapters", "list", "--status", "active").output

    shown = run("adapters", "show", "support").output
    assert "support@v1 (id 1)" in shown and "adapter_model.safetensors" in shown and "rouge-l 41.25" in shown

    result = run("adapters", "rm", "support")
    assert result.exit_code == 1 and "--force" in str(result.exception)
    assert "Archived support@v2" in run("adapters", "archive", "support@v2").output
    assert "Removed support@v1" in run("adapters", "rm", "support", "--force").output
    result = run("adapters", "show", "support@v1")
    assert result.exit_code == 1 and isinstance(result.exception, UnknownAdapterError)


def test_a_version_that_learned_nothing_is_promoted_only_with_force(cli):
    """Found by a newcomer: a 100-step run warned "the prefix learned nothing", then `adapters promote`
    made it active without a word and the domain's answers turned to garble."""
    run, registry = cli
    registry.add_domain("yoga")
    registry.promote(register(registry, "yoga", seed=1, metrics={"learned": 1.0, "train_rouge-l": 100.0}).ref)
    weak = register(registry, "yoga", seed=2, metrics={"learned": 0.0, "train_rouge-l": 21.0,
                                                      "train_rouge-l_base": 23.2})
    refused = run("adapters", "promote", weak.ref)
    assert refused.exit_code == 1 and registry.resolve("yoga").version == 1
    assert "yoga@v2 learned nothing in training (ROUGE-L on its training questions 21.0, the plain base 23.2)" in (
        str(refused.exception)) and "glmbot adapters promote yoga@v2 --force" in str(refused.exception)
    assert "now the active adapter" in run("adapters", "promote", weak.ref, "--force").output
    assert registry.resolve("yoga").version == 2
    assert "no active adapter" not in run("adapters", "archive", "yoga@v1").output  # not the active one
    archived = run("adapters", "archive", "yoga@v2").output  # the active one: the domain is left without
    assert "yoga has no active adapter now" in archived and "glmbot adapters promote yoga@vN" in archived


def test_verify_exit_code(cli):
    run, registry = cli
    registry.add_domain("support")
    info = register(registry)
    result = run("adapters", "verify")
    assert result.exit_code == 0 and "1 of 1 adapter(s) intact" in result.output
    weights = info.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run("adapters", "verify", "support@v1")
    assert result.exit_code == 1
    assert "MISMATCH support@v1: adapter_model.safetensors has sha256" in result.stderr
    assert info.files["adapter_model.safetensors"] in result.stderr and "0 of 1" in result.stderr


def test_import_export_gc_commands(cli, tmp_path, base_model):
    run, registry = cli
    folder = official_checkpoint(tmp_path / "official", {"transformer.prefix_encoder.embedding.weight":
                                                         torch.randn(6, CONFIG.prefix_width)}, pre_seq_len=6)
    result = run("adapters", "import", folder, "--domain", "support")
    assert result.exit_code == 1 and "glmbot domains add support" in str(result.exception)
    result = run("adapters", "import", folder, "--domain", "support", "--create-domain")
    assert result.exit_code == 0, result.output
    assert "as support@v1 (candidate, P=6)" in result.output
    info = registry.resolve("support@v1")
    assert info.base_fingerprint == base_fingerprint(base_model) and info.base_model == "builtin:tiny"

    result = run("adapters", "export", "support@v1", tmp_path / "out")
    assert result.exit_code == 0 and "Exported support@v1" in result.output
    assert "as support@v2" in run("adapters", "import", tmp_path / "out", "-d", "support").output

    (registry.adapters_dir / "support" / "v9").mkdir()
    result = run("adapters", "gc")
    assert "removed" in result.output and "v9" in result.output and "Removed 1 folder(s)." in result.output
    assert "Nothing to clean." in run("adapters", "gc").output


def test_the_metrics_column_puts_what_says_most_first():
    from glmbot.cli.adapters import format_metrics

    # A domain without dev data: its training questions' score and whether it learned them, not
    # "learned 1, probe_forgot 1, probe_kept 0.1645 (+3)" in alphabetical order (a newcomer's puzzle).
    trained = {"learned": 1.0, "probe_forgot": 1.0, "probe_kept": 0.1645, "train_rouge-l": 100.0,
               "train_rouge-l_base": 23.6, "train_loss": 0.01}
    # The probe as the share `glmbot train` printed ("keeps 16%"), not "probe_forgot 1" (another puzzle).
    assert format_metrics(trained) == "train_rouge-l 100, learned yes, general chat kept 16% (+2)"
    assert format_metrics({"rouge-l": 40.1, "bleu-4": 20.0, "learned": 0.0, "train_rouge-l": 99.0}) == (
        "rouge-l 40.1, bleu-4 20, train_rouge-l 99 (+1)")
    assert format_metrics({"learned": 0.0}) == "learned no" and format_metrics({}) == "-"
